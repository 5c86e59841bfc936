"""The IFS Cloud simulator over real HTTP: tokens, OData envelope, query options, faults, admin API."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from core.clock import FakeClock
from simulator.ifs import IfsSimulator, decode_etag, run_generator

TOKEN_PATH = "/auth/realms/ifs/protocol/openid-connect/token"
ROOT = "/main/ifsapplications/projection/v1"
ORDERS = f"{ROOT}/PurchaseOrderHandling.svc/PurchaseOrderSet"
INVOICES = f"{ROOT}/ManualSupplierInvoiceHandling.svc/ManualSupplierInvoiceSet"
VOUCHERS = f"{ROOT}/ApproveVouchersHandling.svc/VoucherApprovalSet"
PLANNED = "Objstate eq IfsApp.PurchaseOrderHandling.PurchaseOrderState'Planned'"
CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": "notifier",
    "client_secret": "notifier-secret",
    "scope": "openid microprofile-jwt",
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[IfsSimulator]:
    simulator = IfsSimulator(clock=clock.time)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: IfsSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        yield http


async def bearer(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post(TOKEN_PATH, data=CREDENTIALS)
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    return await client.get(path, params=params, headers=await bearer(client))


# ---------------------------------------------------------------- tokens


async def test_token_endpoint_issues_keycloak_shaped_token(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    response = await client.post(TOKEN_PATH, data=CREDENTIALS)

    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 180 and body["refresh_expires_in"] == 1800
    assert (
        body["not-before-policy"] == 0 and body["scope"] == "openid audience microprofile-jwt profile email"
    )
    assert len(body["access_token"]) >= 32
    assert sim.tokens_issued == 1


@pytest.mark.parametrize(
    ("path", "form", "status", "error"),
    [
        ("/auth/realms/other/protocol/openid-connect/token", CREDENTIALS, 404, "Realm does not exist"),
        (TOKEN_PATH, {**CREDENTIALS, "client_secret": "wrong"}, 401, "unauthorized_client"),
        (TOKEN_PATH, {**CREDENTIALS, "client_id": "stranger"}, 401, "unauthorized_client"),
        (TOKEN_PATH, {**CREDENTIALS, "grant_type": "password"}, 400, "unsupported_grant_type"),
    ],
)
async def test_token_endpoint_rejects_bad_requests(
    client: httpx.AsyncClient, path: str, form: dict[str, str], status: int, error: str
) -> None:
    response = await client.post(path, data=form)

    assert response.status_code == status
    assert response.json()["error"] == error


async def test_token_expires_by_injected_clock(client: httpx.AsyncClient, clock: FakeClock) -> None:
    headers = await bearer(client)
    assert (await client.get(ORDERS, headers=headers)).status_code == 200
    clock.advance(181)

    response = await client.get(ORDERS, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json()["error"]) >= {"code", "message"}


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic bm90aWZpZXI6eA=="])
async def test_data_without_valid_bearer_is_401(client: httpx.AsyncClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    response = await client.get(ORDERS, headers=headers)

    assert response.status_code == 401


async def test_expire_all_tokens_forces_new_token(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    headers = await bearer(client)
    sim.expire_all_tokens()

    response = await client.get(ORDERS, headers=headers)

    assert response.status_code == 401
    assert (await get(client, ORDERS)).status_code == 200


async def test_request_log_separates_token_and_data_requests(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    await get(client, ORDERS, **{"$top": "1"})

    await get(client, INVOICES)

    assert [r.status for r in sim.requests] == [200, 200, 200, 200]
    assert [r.path for r in sim.data_requests()] == [ORDERS, INVOICES]
    assert sim.data_requests("Invoice")[0].client_id == "notifier"
    assert sim.data_requests()[0].query == {"$top": "1"}


# ---------------------------------------------------------------- envelope, etags, metadata


async def test_collection_envelope_and_context(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_order(OrderNo="P1", GrossAmtCurr=1234.5)

    response = await get(client, ORDERS)

    body = response.json()
    assert response.headers["Content-Type"] == "application/json;odata.metadata=minimal"
    assert body["@odata.context"] == (
        f"{sim.base_url}/main/ifsapplications/projection/v1/PurchaseOrderHandling.svc/$metadata#PurchaseOrderSet"
    )
    (row,) = body["value"]
    assert row["OrderNo"] == "P1" and row["GrossAmtCurr"] == 1234.5 and row["Objstate"] == "Planned"
    assert row["luname"] == "PurchaseOrder" and row["keyref"] == "ORDER_NO=P1^" and row["Objgrants"] is None
    assert len(row["OrderDate"]) == 10 and row["OrderDate"][4] == "-"


async def test_integration_prefix_serves_the_same_data(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_order(OrderNo="P1")

    response = await get(client, ORDERS.replace("/main/", "/int/"))

    assert response.json()["value"][0]["OrderNo"] == "P1"
    assert "/int/ifsapplications/" in response.json()["@odata.context"]


async def test_etag_encodes_objid_and_objversion(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_invoice()

    row = (await get(client, INVOICES)).json()["value"][0]

    etag = row["@odata.etag"]
    assert etag.startswith('W/"') and etag.endswith('"')
    inner = base64.b64decode(etag[3:-1]).decode()
    assert inner == f'W/"{row["Objid"]}:{row["Objversion"]}"'
    assert decode_etag(etag) == (row["Objid"], row["Objversion"])
    assert len(row["Objversion"]) == 14 and row["Objversion"].isdigit()


async def test_update_changes_etag_even_within_the_same_second(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    before = sim.add_order(OrderNo="P1")
    sim.update("order", {"OrderNo": "P1"}, GrossAmtCurr=10)

    after = sim.update("order", {"OrderNo": "P1"}, GrossAmtCurr=20)

    served = (await get(client, ORDERS)).json()["value"][0]
    assert served["@odata.etag"] == after["@odata.etag"] != before["@odata.etag"]
    assert served["Objid"] == before["Objid"] and served["Objversion"] > before["Objversion"]
    assert served["GrossAmtCurr"] == 20


async def test_ieee754_compatible_sends_decimals_as_strings(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    sim.add_invoice(NetCurrAmount="100.25", GrossCurrAmount="125.31")
    headers = {
        **await bearer(client),
        "Accept": "application/json;odata.metadata=minimal;IEEE754Compatible=true",
    }

    row = (await client.get(INVOICES, headers=headers)).json()["value"][0]

    assert row["NetCurrAmount"] == "100.25" and row["GrossCurrAmount"] == "125.31"
    assert row["InvoiceId"] == 1001


async def test_metadata_and_service_document(client: httpx.AsyncClient) -> None:
    metadata = await get(client, f"{ROOT}/ApproveVouchersHandling.svc/$metadata")
    service = await get(client, f"{ROOT}/ApproveVouchersHandling.svc/")

    assert 'Namespace="IfsApp.ApproveVouchersHandling"' in metadata.text
    assert '<EnumType Name="VoucherState" UnderlyingType="Edm.Int32">' in metadata.text
    assert 'Name="SumDebitAmount" Type="Edm.Decimal" Precision="130" Scale="65"' in metadata.text
    assert 'Name="VoucherDate" Type="Edm.Date"' in metadata.text
    assert '<EntityContainer Name="DefaultContainer">' in metadata.text
    assert service.json()["value"] == [
        {"name": "VoucherApprovalSet", "kind": "EntitySet", "url": "VoucherApprovalSet"}
    ]


async def test_unknown_projection_is_metadata_not_found(client: httpx.AsyncClient) -> None:
    response = await get(client, f"{ROOT}/NoSuchHandling.svc/Things")

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Metadata not found."


async def test_unknown_entity_set_is_not_found(client: httpx.AsyncClient) -> None:
    response = await get(client, f"{ROOT}/PurchaseOrderHandling.svc/NoSuchSet")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ODP_RESOURCE_NOTFOUND"


# ---------------------------------------------------------------- $filter


async def test_qualified_enum_filter_returns_pending_only(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    sim.add_order(OrderNo="P1")
    sim.add_order(OrderNo="P2", Objstate="Released")

    response = await get(client, ORDERS, **{"$filter": f"Company eq '10' and {PLANNED}"})

    assert [r["OrderNo"] for r in response.json()["value"]] == ["P1"]


async def test_unqualified_enum_literal_is_malformed_request(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    sim.add_order()

    response = await get(client, ORDERS, **{"$filter": "Objstate eq 'Planned'"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "Malformed Request."
    assert isinstance(error["code"], str)
    (detail,) = error["details"]
    assert set(detail) == {"code", "message"}
    assert "IfsApp.PurchaseOrderHandling.PurchaseOrderState" in detail["message"]


async def test_unknown_filter_property_is_400_with_ifs_detail(client: httpx.AsyncClient) -> None:
    response = await get(client, VOUCHERS, **{"$filter": "NotAColumn eq 1"})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Malformed Request."
    assert response.json()["error"]["details"][0]["message"] == (
        "The property 'NotAColumn', used in a query expression, "
        "is not defined in type 'IfsApp.ApproveVouchersHandling.VoucherApproval'."
    )


async def test_unsupported_filter_function_is_not_implemented(client: httpx.AsyncClient) -> None:
    response = await get(client, INVOICES, **{"$filter": "round(NetCurrAmount) eq 10"})

    assert response.status_code == 501
    assert response.json()["error"]["code"] == "ODP_NOT_IMPLEMENTED"


async def test_date_and_amount_filters(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_voucher(VoucherDate="2026-01-31", AmountInAccCurr=50)
    sim.add_voucher(VoucherDate="2026-02-01", AmountInAccCurr=5000)
    sim.add_voucher(VoucherDate="2026-02-02", AmountInAccCurr=50)

    response = await get(
        client, VOUCHERS, **{"$filter": "VoucherDate ge 2026-02-01 and AmountInAccCurr lt 1000"}
    )

    assert [r["VoucherDate"] for r in response.json()["value"]] == ["2026-02-02"]


async def test_objstate_filter_rejected_when_tenant_refuses_it(clock: FakeClock) -> None:
    sim = IfsSimulator(clock=clock.time, reject_objstate_filter=True)
    sim.add_order(OrderNo="P1")
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        refused = await get(client, ORDERS, **{"$filter": PLANNED})
        allowed = await get(client, ORDERS, **{"$filter": "OrderDate ge 2020-01-01"})

    assert refused.status_code == 400 and refused.json()["error"]["message"] == "Malformed Request."
    assert [r["OrderNo"] for r in allowed.json()["value"]] == ["P1"]


# ---------------------------------------------------------------- $select, $orderby, paging


async def test_select_returns_only_requested_columns(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_order(OrderNo="P1")

    body = (await get(client, ORDERS, **{"$select": "OrderNo,GrossAmtCurr"})).json()

    assert body["@odata.context"].endswith("#PurchaseOrderSet(OrderNo,GrossAmtCurr)")
    assert list(body["value"][0]) == ["@odata.etag", "OrderNo", "GrossAmtCurr"]  # as IFS answers a $select


async def test_select_unknown_column_is_400(client: httpx.AsyncClient) -> None:
    response = await get(client, ORDERS, **{"$select": "OrderNo,Nope"})

    assert response.status_code == 400


async def test_expand_is_not_implemented(client: httpx.AsyncClient) -> None:
    response = await get(client, ORDERS, **{"$expand": "PurchaseOrderApprovalArray"})

    assert response.json()["error"]["code"] == "ODP_NOT_IMPLEMENTED"


async def test_orderby_top_skip_pages_are_stable(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.bulk_generate("order", 23)
    expected = sorted(sim.rows("order"), key=lambda r: (-r["GrossAmtCurr"], r["OrderNo"]))
    headers = await bearer(client)

    pages = []
    for skip in range(0, 30, 7):
        params = {
            "$orderby": "GrossAmtCurr desc,OrderNo",
            "$top": "7",
            "$skip": str(skip),
            "$select": "OrderNo",
        }
        pages.append((await client.get(ORDERS, params=params, headers=headers)).json()["value"])

    assert [len(p) for p in pages] == [7, 7, 7, 2, 0]
    assert [r["OrderNo"] for p in pages for r in p] == [r["OrderNo"] for r in expected]


async def test_orderby_puts_nulls_last_ascending(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_invoice(PoRefNumber=None)
    sim.add_invoice(PoRefNumber="P2")
    sim.add_invoice(PoRefNumber="P1")

    body = (await get(client, INVOICES, **{"$orderby": "PoRefNumber asc"})).json()

    assert [r["PoRefNumber"] for r in body["value"]] == ["P1", "P2", None]


async def test_server_driven_paging_follows_next_links(clock: FakeClock) -> None:
    sim = IfsSimulator(clock=clock.time, server_page_size=4)
    sim.bulk_generate("order", 10)
    sim.bulk_generate("order", 3, company="20")
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        headers = await bearer(client)
        first = await client.get(
            ORDERS, params={"$filter": "Company eq '10'", "$orderby": "OrderNo"}, headers=headers
        )
        pages = [first.json()]
        while "@odata.nextLink" in pages[-1]:
            pages.append((await client.get(pages[-1]["@odata.nextLink"], headers=headers)).json())

    links = [p["@odata.nextLink"] for p in pages[:-1]]
    assert [len(p["value"]) for p in pages] == [4, 4, 2]
    assert all(
        link.startswith(f"{sim.base_url}/main/ifsapplications/") and "$skip=" in link for link in links
    )
    numbers = [r["OrderNo"] for p in pages for r in p["value"]]
    assert numbers == sorted(numbers) and len(set(numbers)) == 10
    assert all(r["Company"] == "10" for p in pages for r in p["value"])


async def test_server_paging_respects_client_top(clock: FakeClock) -> None:
    sim = IfsSimulator(clock=clock.time, server_page_size=3)
    sim.bulk_generate("voucher", 10)
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        headers = await bearer(client)
        small = (await client.get(VOUCHERS, params={"$top": "2"}, headers=headers)).json()
        first = (await client.get(VOUCHERS, params={"$top": "5"}, headers=headers)).json()
        second = (await client.get(first["@odata.nextLink"], headers=headers)).json()

    assert len(small["value"]) == 2 and "@odata.nextLink" not in small
    assert len(first["value"]) == 3 and len(second["value"]) == 2 and "@odata.nextLink" not in second


@pytest.mark.parametrize(
    "params", [{"$top": "-1"}, {"$skip": "x"}, {"$orderby": "Nope desc"}, {"$bogus": "1"}]
)
async def test_bad_query_options_are_400(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await get(client, ORDERS, **params)

    assert response.status_code == 400


# ---------------------------------------------------------------- keys and navigation


async def test_get_by_single_key(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    row = sim.add_order(OrderNo="P1001")

    response = await get(client, f"{ORDERS}(OrderNo='P1001')")

    body = response.json()
    assert body["@odata.context"].endswith("#PurchaseOrderSet/$entity")
    assert body["OrderNo"] == "P1001"
    assert response.headers["ETag"] == body["@odata.etag"] == row["@odata.etag"]


async def test_get_by_multi_key(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_invoice(company="20", InvoiceId=105)

    response = await get(client, f"{INVOICES}(Company='20',InvoiceId=105)")

    assert response.status_code == 200
    assert (response.json()["Company"], response.json()["InvoiceId"]) == ("20", 105)
    assert response.json()["keyref"] == "COMPANY=20^INVOICE_ID=105^"


async def test_get_voucher_by_four_part_key(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    row = sim.add_voucher(VoucherType="M", VoucherNo=7, VoucherDate="2026-03-05")

    response = await get(client, f"{VOUCHERS}(Company='10',AccountingYear=2026,VoucherType='M',VoucherNo=7)")

    assert response.json()["@odata.etag"] == row["@odata.etag"]
    assert response.json()["AccountingPeriod"] == 3


@pytest.mark.parametrize(
    ("suffix", "status"),
    [("(OrderNo='NOPE')", 404), ("(OrderNo=5)", 400), ("(Company='10')", 400)],
)
async def test_get_by_key_errors(
    sim: IfsSimulator, client: httpx.AsyncClient, suffix: str, status: int
) -> None:
    sim.add_order(OrderNo="P1")

    response = await get(client, ORDERS + suffix)

    assert response.status_code == status
    if status == 404:
        assert response.json()["error"]["code"] == "ODP_RESOURCE_NOTFOUND"


async def test_order_approval_navigation(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_order(OrderNo="P1")

    body = (await get(client, f"{ORDERS}(OrderNo='P1')/PurchaseOrderApprovalArray")).json()

    steps = body["value"]
    assert body["@odata.context"].endswith("#PurchaseOrderSet(OrderNo='P1')/PurchaseOrderApprovalArray")
    assert 1 <= len(steps) <= 3
    assert [s["SequenceNo"] for s in steps] == list(range(1, len(steps) + 1))
    assert all(
        s["OrderNo"] == "P1" and s["ApproverSign"] is None and s["DateApproved"] is None for s in steps
    )
    assert all(s["AuthorizeId"] and s["@odata.etag"] for s in steps)


async def test_invoice_authorizer_navigation(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_invoice(InvoiceId=105)

    lines = (await get(client, f"{INVOICES}(Company='10',InvoiceId=105)/AuthorizerArray")).json()["value"]

    assert lines and all(line["Objstate"] == "Unacknowledged" for line in lines)
    assert {line["Role"] for line in lines} <= {"Authorizer", "Acknowledger"}
    assert lines == sim.nav_rows("invoice", {"Company": "10", "InvoiceId": 105})


async def test_ungranted_company_returns_empty_not_403(clock: FakeClock) -> None:
    sim = IfsSimulator(clock=clock.time, granted_companies={"10"})
    sim.add_order("10", OrderNo="P1")
    sim.add_order("20", OrderNo="P2")
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        hidden = await get(client, ORDERS, **{"$filter": "Company eq '20'"})
        everything = await get(client, ORDERS)
        by_key = await get(client, f"{ORDERS}(OrderNo='P2')")

    assert hidden.status_code == 200 and hidden.json()["value"] == []
    assert [r["OrderNo"] for r in everything.json()["value"]] == ["P1"]
    assert by_key.status_code == 404


# ---------------------------------------------------------------- faults


async def test_fail_next_429_carries_retry_after(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    headers = await bearer(client)
    sim.faults.fail_next(2, status=429, retry_after=1.0)

    responses = [await client.get(ORDERS, headers=headers) for _ in range(3)]

    assert [r.status_code for r in responses] == [429, 429, 200]
    assert responses[0].headers["Retry-After"] == "1"
    assert [r.status for r in sim.data_requests()] == [429, 429, 200]


async def test_fail_next_mi_modified_error(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    headers = await bearer(client)
    sim.faults.fail_next(1, status=500, code="MI_MODIFIED_ERROR")

    response = await client.get(ORDERS, headers=headers)

    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "MI_MODIFIED_ERROR",
        "message": "Service metadata already modified.",
    }
    assert "Retry-After" not in response.headers


async def test_fail_next_503_and_path_restriction(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    headers = await bearer(client)
    sim.faults.fail_next(1, status=503, path="VoucherApprovalSet")

    order = await client.get(ORDERS, headers=headers)
    voucher = await client.get(VOUCHERS, headers=headers)

    assert (order.status_code, voucher.status_code) == (200, 503)


async def test_faults_spare_token_endpoint_unless_asked(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.fail_next(1, status=503)
    sim.faults.fail_next(1, status=503, token=True)

    first = await client.post(TOKEN_PATH, data=CREDENTIALS)
    second = await client.post(TOKEN_PATH, data=CREDENTIALS)
    data = await client.get(ORDERS, headers={"Authorization": f"Bearer {second.json()['access_token']}"})

    assert (first.status_code, second.status_code, data.status_code) == (503, 200, 503)


async def test_drop_next_closes_connection(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    headers = await bearer(client)
    sim.faults.drop_next(1)

    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(ORDERS, headers=headers)

    assert (await client.get(ORDERS, headers=headers)).status_code == 200
    assert [r.status for r in sim.data_requests()] == [0, 200]


async def test_malformed_next_truncates_json(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.bulk_generate("order", 3)
    headers = await bearer(client)
    sim.faults.malformed_next(1)

    response = await client.get(ORDERS, headers=headers)

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


async def test_slow_next_delays_past_client_timeout(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    headers = await bearer(client)
    sim.faults.slow_next(1, 30.0)

    with pytest.raises(httpx.ReadTimeout):
        await client.get(ORDERS, headers=headers, timeout=0.2)

    assert (await client.get(ORDERS, headers=headers)).status_code == 200


async def test_rate_limit_answers_429_until_window_passes(
    sim: IfsSimulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    headers = await bearer(client)
    sim.faults.rate_limit(3)

    statuses = [(await client.get(ORDERS, headers=headers)).status_code for _ in range(4)]
    limited = await client.get(ORDERS, headers=headers)
    clock.advance(60)
    after = await client.get(ORDERS, headers=headers)

    assert statuses == [200, 200, 200, 429]
    assert limited.headers["Retry-After"] == "60"
    assert after.status_code == 200


# ---------------------------------------------------------------- approval and volume


async def test_approve_order_moves_it_out_of_pending(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_order(OrderNo="P1")
    sim.add_order(OrderNo="P2")

    approved = sim.approve("order", {"OrderNo": "P1"}, by="BRITA")

    pending = (await get(client, ORDERS, **{"$filter": PLANNED})).json()["value"]
    assert approved["Objstate"] == "Released"
    assert [r["OrderNo"] for r in pending] == ["P2"]
    assert all(
        s["ApproverSign"] == "BRITA" and s["DateApproved"] for s in sim.nav_rows("order", {"OrderNo": "P1"})
    )


async def test_approve_invoice_authorizes_lines(sim: IfsSimulator) -> None:
    sim.add_invoice(InvoiceId=7)

    approved = sim.approve("invoice", {"Company": "10", "InvoiceId": 7})

    assert (approved["Objstate"], approved["AuthStatus"]) == ("PostedAuth", None)
    lines = sim.nav_rows("invoice", {"Company": "10", "InvoiceId": 7})
    assert all(line["Objstate"] == "Authorized" for line in lines if line["Role"] == "Authorizer")
    assert all(line["Objstate"] == "Acknowledged" for line in lines if line["Role"] == "Acknowledger")
    assert all(line["AuthorizedDate"] for line in lines)


async def test_two_approver_voucher_needs_two_approvals(sim: IfsSimulator) -> None:
    row = sim.add_voucher(TwoApproverRequired=True)
    key = {k: row[k] for k in ("Company", "AccountingYear", "VoucherType", "VoucherNo")}

    first = sim.approve("voucher", key, by="EMMA")
    second = sim.approve("voucher", key, by="HIRO")

    assert (first["Objstate"], first["ApprovedByUserid"]) == ("PartiallyApproved", "EMMA")
    assert (second["Objstate"], second["SecondApproverId"]) == ("Confirmed", "HIRO")
    with pytest.raises(ValueError):
        sim.approve("voucher", key)


async def test_approve_step_signs_one_line_without_touching_header(sim: IfsSimulator) -> None:
    sim.add_order(OrderNo="P1")
    while len(sim.nav_rows("order", {"OrderNo": "P1"})) < 2:
        sim.remove("order", {"OrderNo": "P1"})
        sim.add_order(OrderNo="P1")
    before = sim.get("order", {"OrderNo": "P1"})

    after = sim.approve_step("order", {"OrderNo": "P1"}, by="CHEN")

    steps = sim.nav_rows("order", {"OrderNo": "P1"})
    assert after == before
    assert steps[0]["ApproverSign"] == "CHEN" and steps[1]["ApproverSign"] is None


async def test_generated_keys_skip_keys_chosen_by_hand(sim: IfsSimulator) -> None:
    sim.add_order(OrderNo="P1001")
    sim.add_invoice(InvoiceId=5000)

    sim.bulk_generate("order", 2)
    sim.bulk_generate("invoice", 2)

    assert [r["OrderNo"] for r in sim.rows("order")] == ["P1001", "P1002", "P1003"]
    assert [r["InvoiceId"] for r in sim.rows("invoice")] == [5000, 5001, 5002]
    with pytest.raises(ValueError, match="already exists"):
        sim.add_order(OrderNo="P1002")


async def test_update_rejects_key_and_unknown_columns(sim: IfsSimulator) -> None:
    sim.add_order(OrderNo="P1")

    with pytest.raises(ValueError):
        sim.update("order", {"OrderNo": "P1"}, OrderNo="P2")
    with pytest.raises(ValueError):
        sim.update("order", {"OrderNo": "P1"}, Nope=1)
    with pytest.raises(ValueError):
        sim.update("order", {"OrderNo": "P1"}, Objstate="Frozen")
    with pytest.raises(KeyError):
        sim.update("order", {"OrderNo": "P404"}, CostCenter="X")


async def test_removed_record_disappears(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.add_order(OrderNo="P1")

    sim.remove("order", {"OrderNo": "P1"})

    assert (await get(client, ORDERS)).json()["value"] == []


async def test_bulk_generate_hundred_thousand(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    sim.bulk_generate("invoice", 100_000)

    tail = await get(client, INVOICES, **{"$skip": "99999", "$top": "5000", "$select": "InvoiceId"})

    assert len(sim.rows("invoice")) == 100_000
    assert len({(r["Company"], r["InvoiceId"]) for r in sim.rows("invoice")}) == 100_000
    assert len(tail.json()["value"]) == 1


async def test_generated_data_is_deterministic_from_seed(clock: FakeClock) -> None:
    def sample(seed: int) -> list[dict[str, Any]]:
        sim = IfsSimulator(clock=clock.time, seed=seed)
        sim.bulk_generate("order", 5)
        sim.add_invoice()
        return [
            {k: v for k, v in r.items() if k != "Objkey"} for r in sim.rows("order") + sim.rows("invoice")
        ]

    assert sample(1) == sample(1) != sample(2)


# ---------------------------------------------------------------- admin API, generator, CLI


async def test_admin_api_round_trip(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    created = await client.post("/_sim/order", json={"company": "20", "OrderNo": "P9", "GrossAmtCurr": 99.5})
    patched = await client.patch("/_sim/order", json={"key": {"OrderNo": "P9"}, "CostCenter": "CC999"})
    approved = await client.post("/_sim/orders/approve", json={"key": {"OrderNo": "P9"}, "by": "GRETA"})
    faults = await client.post("/_sim/faults", json={"fail_next": 2, "status": 429, "retry_after": 1})
    bad = await client.post("/_sim/order", json={"Nope": 1})
    missing = await client.post("/_sim/order/approve", json={"key": {"OrderNo": "P0"}})

    stats = (await client.get("/_sim/stats")).json()

    assert created.status_code == 201 and created.json()["Company"] == "20"
    assert (
        patched.json()["CostCenter"] == "CC999"
        and patched.json()["@odata.etag"] != created.json()["@odata.etag"]
    )
    assert approved.json()["Objstate"] == "Released"
    assert faults.json()["faults"][0]["remaining"] == 2
    assert (bad.status_code, missing.status_code) == (400, 404)
    assert stats["records"]["order"] == {"total": 1, "pending": 0, "by_state": {"Released": 1}}
    assert stats["requests"] == 0 and stats["tokens_issued"] == 0


async def test_admin_faults_apply_to_data_requests(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    headers = await bearer(client)
    await client.post("/_sim/faults", json={"fail_next": 1, "status": 500, "code": "MI_MODIFIED_ERROR"})

    response = await client.get(ORDERS, headers=headers)

    assert response.json()["error"]["code"] == "MI_MODIFIED_ERROR"


async def test_run_generator_adds_records_until_cancelled(sim: IfsSimulator) -> None:
    seen: list[str] = []
    four = asyncio.Event()

    def record(kind: object, row: dict[str, Any]) -> None:
        seen.append(row["Company"])
        if len(seen) == 4:
            four.set()

    task = asyncio.create_task(run_generator(sim, 0, "invoice", ["10", "20"], on_record=record))
    await asyncio.wait_for(four.wait(), 30)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen[:4] == ["10", "20", "10", "20"]
    assert len(sim.rows("invoice")) == len(seen)


async def test_cli_prints_base_url_and_seeded_records() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator.ifs",
        "--port",
        "0",
        "--seed-orders",
        "2",
        "--companies",
        "10,20",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 30)).decode() for _ in range(5)]
        base_url = lines[0].split()[3]
        async with httpx.AsyncClient(base_url=base_url) as client:
            stats = (await client.get("/_sim/stats")).json()
    finally:
        process.terminate()
        await process.wait()

    assert base_url.startswith("http://127.0.0.1:")
    assert sum(line.startswith("order") for line in lines[1:]) == 4
    assert stats["records"]["order"]["pending"] == 4


# ---------------------------------------------------------------- odata.metadata=none

BARE = "application/json;odata.metadata=none"


async def test_odata_metadata_none_leaves_out_context_and_etags_but_keeps_next_links(clock: FakeClock) -> None:
    sim = IfsSimulator(clock=clock.time, server_page_size=4)
    sim.bulk_generate("order", 6)
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        headers = {**await bearer(client), "Accept": BARE}
        params = {"$select": "OrderNo,Objstate,Objversion", "$orderby": "OrderNo"}
        first = await client.get(ORDERS, params=params, headers=headers)
        rest = (await client.get(first.json()["@odata.nextLink"], headers=headers)).json()
        whole = (await client.get(ORDERS, params={"$top": "1"}, headers=headers)).json()
        order_no = first.json()["value"][0]["OrderNo"]
        by_key = await client.get(f"{ORDERS}(OrderNo='{order_no}')", headers=headers)
        minimal = (await client.get(ORDERS, params=params, headers=await bearer(client))).json()
    assert first.headers["Content-Type"] == BARE
    body = first.json()
    assert set(body) == {"value", "@odata.nextLink"}
    assert [set(r) for r in body["value"] + rest["value"]] == [{"OrderNo", "Objstate", "Objversion"}] * 6
    assert "@odata.context" not in whole and not any(k.startswith("@odata.") for k in whole["value"][0])
    assert "Objversion" in whole["value"][0] and "luname" in whole["value"][0]
    assert by_key.headers["ETag"].startswith('W/"') and not any(k.startswith("@odata.") for k in by_key.json())
    # the same query with minimal metadata, as before: each row's etag carries its Objversion
    row = minimal["value"][0]
    assert "@odata.context" in minimal and decode_etag(row["@odata.etag"])[1] == row["Objversion"]


async def test_a_tenant_profile_may_ignore_odata_metadata_none_or_lack_objversion(clock: FakeClock) -> None:
    import dataclasses

    from simulator.profiles import DEFAULT

    ignoring = IfsSimulator(clock=clock.time, profile=dataclasses.replace(DEFAULT, metadata_none=False))
    lacking = IfsSimulator(clock=clock.time, profile=dataclasses.replace(DEFAULT, objversion=False))
    for sim in (ignoring, lacking):
        sim.add_order()
    async with ignoring, lacking, httpx.AsyncClient(base_url=ignoring.base_url) as one, \
            httpx.AsyncClient(base_url=lacking.base_url) as other:
        answered = await one.get(ORDERS, params={"$select": "OrderNo,Objversion"},
                                 headers={**await bearer(one), "Accept": BARE})
        refused = await get(other, ORDERS, **{"$select": "OrderNo,Objversion"})
        metadata = (await get(other, f"{ROOT}/PurchaseOrderHandling.svc/$metadata")).text
        whole = (await get(other, ORDERS)).json()["value"][0]
    assert answered.headers["Content-Type"] == "application/json;odata.metadata=minimal"
    assert "@odata.context" in answered.json() and "@odata.etag" in answered.json()["value"][0]
    assert refused.status_code == 400 and "Objversion" in refused.json()["error"]["details"][0]["message"]
    header = metadata.split('EntityType Name="PurchaseOrder"', 1)[1].split("</EntityType>", 1)[0]
    assert 'Name="Objversion"' not in header and 'Name="Objid"' in header
    assert "Objversion" not in whole and "@odata.etag" in whole
