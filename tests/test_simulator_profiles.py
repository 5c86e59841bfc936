"""Tenant profiles over real HTTP: each serves its own names and $metadata, driven with canonical names."""

from __future__ import annotations

import asyncio
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
import pytest

from core.clock import FakeClock
from core.domain import RecordKind
from pollers.sources import DEFAULT_SOURCES
from simulator.ifs import IfsSimulator, is_pending
from simulator.profiles import PROFILES, KindNames, Profile, get_profile
from tests.test_simulator_ifs import CREDENTIALS, ROOT, TOKEN_PATH, bearer, get

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"


@dataclass(frozen=True)
class Expected:
    """One kind in one profile, written out by hand so the simulator cannot agree by construction."""

    projection: str
    entity_set: str
    entity_type: str
    keys: tuple[str, ...]
    state: str
    state_type: str  # an enum type's qualified name, or Edm.String
    amount: str
    absent: tuple[str, ...]  # canonical or other names the type must not have
    nav: str | None
    projection_sets: frozenset[str]  # every entity set of the projection's container
    enums: frozenset[str]  # every EnumType of the projection


def _expected(
    projection: str, entity_set: str, entity_type: str, keys: str, state: str, state_type: str, amount: str,
    absent: str, nav: str | None, sets: str, enums: str = "",
) -> Expected:
    return Expected(
        projection, entity_set, entity_type, tuple(keys.split()), state,
        f"IfsApp.{projection}.{state_type}" if state_type != "Edm.String" else state_type,
        amount, tuple(absent.split()), nav, frozenset(sets.split()) | {"Reference_Company"},
        frozenset(enums.split()),
    )


EXPECTED: dict[str, dict[RecordKind, Expected]] = {
    "default": {
        RecordKind.ORDER: _expected(
            "PurchaseOrderHandling", "PurchaseOrderSet", "PurchaseOrder", "OrderNo", "Objstate",
            "PurchaseOrderState", "GrossAmtCurr", "Status GrossAmount", "PurchaseOrderApprovalArray",
            "PurchaseOrderSet PurchaseOrderApprovalSet", "PurchaseOrderState",
        ),
        RecordKind.INVOICE: _expected(
            "ManualSupplierInvoiceHandling", "ManualSupplierInvoiceSet", "ManualSupplierInvoice",
            "Company InvoiceId", "Objstate", "ManSuppInvoiceState", "GrossCurrAmount", "InvoiceState",
            "AuthorizerArray", "ManualSupplierInvoiceSet PostingProposalAuthSet",
            "ManSuppInvoiceState AuthorizerLineState",
        ),
        RecordKind.VOUCHER: _expected(
            "ApproveVouchersHandling", "VoucherApprovalSet", "VoucherApproval",
            "Company AccountingYear VoucherType VoucherNo", "Objstate", "VoucherState", "AmountInAccCurr",
            "EnteredBy", None, "VoucherApprovalSet", "VoucherState",
        ),
    },
    "renamed": {
        RecordKind.ORDER: _expected(
            "PurchaseOrderHandling", "PurchaseOrders", "PurchaseOrderHead", "PurchaseOrderNo", "Status",
            "Edm.String", "GrossAmount",
            "Objstate OrderNo GrossAmtCurr VendorNo VendorName CurrencyCode CostCenter",
            "ApprovalRouteArray",
            "PurchaseOrders PurchaseOrderApprovalRouteSet "
            "Reference_SupplierInfo Reference_PurchaseOrderStatusLov",
        ),
        RecordKind.INVOICE: _expected(
            "SupplierInvoiceHandling", "SupplierInvoices", "SupplierInvoice", "Company InvoiceId",
            "InvoiceState", "Edm.String", "GrossAmount",
            "Objstate AuthStatus Identity IdentityName Currency GrossCurrAmount NetCurrAmount",
            "PostingAuthorizerArray",
            "SupplierInvoices InvoiceAuthorizerSet Reference_SupplierInfo Reference_SupplierInvoiceStateLov",
        ),
        RecordKind.VOUCHER: _expected(
            "VoucherApprovalHandling", "VouchersToApprove", "VoucherToApprove",
            "Company AccountingYear VoucherType VoucherNo", "Objstate", "Edm.String", "Amount",
            "Userid AmountInAccCurr AccCurrencyCode VoucherText2", None,
            "VouchersToApprove Reference_VoucherType Reference_VoucherStateLov",
        ),
    },
    "lean": {
        RecordKind.ORDER: _expected(
            "PurchaseOrderHandling", "PurchaseOrderSet", "PurchaseOrder", "OrderNo", "Objstate",
            "PurchaseOrderStatus", "GrossAmtCurr", "CostCenter VendorName Contract", None,
            "PurchaseOrderSet Reference_SupplierInfo", "PurchaseOrderStatus",
        ),
        RecordKind.INVOICE: _expected(
            "ManSuppInvoiceHandling", "ManSuppInvoiceSet", "ManSuppInvoice", "Company InvoiceId", "Objstate",
            "ManSuppInvoiceState", "GrossCurrAmount",
            "NetCurrAmount DueDate IdentityName InvoiceRecipient PoRefNumber CostCenter", None,
            "ManSuppInvoiceSet Reference_CurrencyCode", "ManSuppInvoiceState",
        ),
        RecordKind.VOUCHER: _expected(
            "ApproveVouchersHandling", "VoucherApprovalSet", "VoucherApproval",
            "Company AccountingYear VoucherType VoucherNo", "Objstate", "VoucherState", "AmountInAccCurr",
            "VoucherText2 CostCenter", None, "VoucherApprovalSet Reference_CurrencyCode", "VoucherState",
        ),
    },
}
KINDS = list(RecordKind)
CASES = [(profile, kind) for profile in EXPECTED for kind in KINDS]


@pytest.fixture(params=list(EXPECTED))
def profile_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def sim(profile_name: str) -> AsyncIterator[IfsSimulator]:
    simulator = IfsSimulator(clock=FakeClock().time, profile=profile_name)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: IfsSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        yield http


def set_path(names: KindNames, suffix: str = "") -> str:
    return f"{ROOT}/{names.projection}.svc/{names.entity_set}{suffix}"


def state_filter(names: KindNames, *states: str) -> str:
    """The profile's own way to name states: qualified enum literals, or plain strings."""
    literal = (lambda s: f"{names.enum_type}'{s}'") if names.enum_type else (lambda s: f"'{s}'")
    return "(" + " or ".join(f"{names.state_field} eq {literal(s)}" for s in states) + ")"


def pending_filter(names: KindNames, kind: RecordKind) -> str:
    if kind is RecordKind.ORDER:
        return state_filter(names, "Planned")
    if kind is RecordKind.INVOICE:
        return f"{state_filter(names, 'Preliminary')} and {names.field('AuthStatus')} eq 'AWAITAUTH'"
    return state_filter(names, "AwaitingApproval", "PartiallyApproved")


def key_of(kind: RecordKind, row: Mapping[str, object]) -> dict[str, object]:
    """The canonical key of a row the data API returned."""
    keys = {RecordKind.ORDER: ("OrderNo",), RecordKind.INVOICE: ("Company", "InvoiceId")}.get(
        kind, ("Company", "AccountingYear", "VoucherType", "VoucherNo")
    )
    return {k: row[k] for k in keys}


def error_detail(response: httpx.Response) -> str:
    return str(response.json()["error"]["details"][0]["message"])


# ---------------------------------------------------------------- $metadata


@pytest.mark.parametrize(("profile_name", "kind"), CASES, indirect=["profile_name"])
async def test_metadata_lists_exactly_the_profile_schema(
    sim: IfsSimulator, client: httpx.AsyncClient, profile_name: str, kind: RecordKind
) -> None:
    want = EXPECTED[profile_name][kind]
    sim.add(kind)
    response = await get(client, f"{ROOT}/{want.projection}.svc/$metadata")
    served = (await get(client, f"{ROOT}/{want.projection}.svc/{want.entity_set}")).json()["value"][0]

    schema = ET.fromstring(response.text).find(f"{EDMX}DataServices/{EDM}Schema")
    assert schema is not None and schema.get("Namespace") == f"IfsApp.{want.projection}"
    container = schema.find(f"{EDM}EntityContainer[@Name='DefaultContainer']")
    assert container is not None
    sets = {s.get("Name"): s for s in container.findall(f"{EDM}EntitySet")}
    assert set(sets) == want.projection_sets
    assert sets[want.entity_set].get("EntityType") == f"IfsApp.{want.projection}.{want.entity_type}"
    assert {e.get("Name") for e in schema.findall(f"{EDM}EnumType")} == want.enums
    header = schema.find(f"{EDM}EntityType[@Name='{want.entity_type}']")
    assert header is not None
    assert tuple(r.get("Name") for r in header.findall(f"{EDM}Key/{EDM}PropertyRef")) == want.keys
    props = {p.get("Name"): p for p in header.findall(f"{EDM}Property")}
    assert set(props) == set(served) - {"@odata.etag"}
    assert props[want.state].get("Type") == want.state_type
    amount = props[want.amount]
    assert (amount.get("Type"), amount.get("Precision"), amount.get("Scale")) == ("Edm.Decimal", "130", "65")
    assert all(props[k].get("Nullable") == "false" for k in want.keys)
    assert not set(want.absent) & set(props)
    navs = header.findall(f"{EDM}NavigationProperty")
    bindings = sets[want.entity_set].findall(f"{EDM}NavigationPropertyBinding")
    if want.nav is None:
        assert navs == [] and bindings == []
    else:
        (nav,) = navs
        (binding,) = bindings
        line_type = sim.profile[kind].nav.entity_type  # type: ignore[union-attr]
        assert nav.get("Name") == want.nav == binding.get("Path")
        assert nav.get("Type") == f"Collection(IfsApp.{want.projection}.{line_type})"
        assert sets[str(binding.get("Target"))].get("EntityType") == f"IfsApp.{want.projection}.{line_type}"


def test_default_profile_names_are_the_product_defaults() -> None:
    for kind, spec in DEFAULT_SOURCES.items():
        names = get_profile("default")[kind]
        assert (names.projection, names.entity_set, names.enum_type) == (
            spec.projection, spec.entity_set, spec.enum_type
        )


def test_renamed_profile_differs_from_the_product_defaults() -> None:
    renamed = get_profile("renamed")
    for kind, spec in DEFAULT_SOURCES.items():
        names = renamed[kind]
        assert names.entity_set != spec.entity_set and names.enum_type is None
        assert names.field(spec.amount) != spec.amount and names.field(spec.party_id) != spec.party_id
    assert renamed["invoice"].projection != DEFAULT_SOURCES[RecordKind.INVOICE].projection


# ---------------------------------------------------------------- listings and data API


@pytest.mark.parametrize(("profile_name", "kind"), CASES, indirect=["profile_name"])
async def test_pending_filter_in_profile_names_returns_exactly_the_pending_rows(
    sim: IfsSimulator, client: httpx.AsyncClient, kind: RecordKind
) -> None:
    names = sim.profile[kind]
    pending = [sim.add(kind), sim.add(kind, "20")]
    done = key_of(kind, sim.add(kind))
    while is_pending(kind, sim.get(kind, done) or {}):  # a two-approver voucher takes two approvals
        sim.approve(kind, done)
    sim.bulk_generate(kind, 50, "30")
    served_keys = [str(names.field(k)) for k in done]

    response = await get(
        client, set_path(names), **{"$filter": f"Company ne '30' and {pending_filter(names, kind)}",
                                    "$select": ",".join(served_keys)}
    )
    everything = await get(client, set_path(names), **{"$filter": pending_filter(names, kind)})

    assert response.status_code == 200, response.text
    got = sorted(tuple(row[k] for k in served_keys) for row in response.json()["value"])
    assert got == sorted(tuple(key_of(kind, row).values()) for row in pending)
    assert len(everything.json()["value"]) == 52
    assert sim.stats()["records"][kind.value]["pending"] == 52


async def test_canonical_data_api_is_served_under_profile_names() -> None:
    sim = IfsSimulator(profile="renamed")
    sim.add("order", OrderNo="P7", GrossAmtCurr=125.5, CurrencyCode="EUR")
    sim.update("order", {"OrderNo": "P7"}, VendorName="Acme AB")
    sim.add("voucher", VoucherNo=9, VoucherType="M", VoucherDate="2026-03-04", Userid="GRETA",
            TwoApproverRequired=False)
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as http:
        order = (await get(http, set_path(sim.profile["order"], "(PurchaseOrderNo='P7')"))).json()
        vouchers = await get(http, set_path(sim.profile["voucher"]), **{"$filter": "EnteredBy eq 'GRETA'"})
        sim.approve("voucher", {"Company": "10", "AccountingYear": 2026, "VoucherType": "M", "VoucherNo": 9})
        after = await get(http, set_path(sim.profile["voucher"]), **{"$filter": "EnteredBy eq 'GRETA'"})

    assert (order["PurchaseOrderNo"], order["GrossAmount"], order["Currency"], order["SupplierName"]) == (
        "P7", 125.5, "EUR", "Acme AB"
    )
    assert order["Status"] == "Planned" and "Objstate" not in order and "GrossAmtCurr" not in order
    assert sim.get("order", {"OrderNo": "P7"})["GrossAmtCurr"] == 125.5  # type: ignore[index]
    assert sim.profile.field("order", "GrossAmtCurr") == "GrossAmount"
    assert sim.profile["order"].to_profile({"OrderNo": "P7"}) == {"PurchaseOrderNo": "P7"}
    (voucher,) = vouchers.json()["value"]
    assert voucher["Objstate"] == "AwaitingApproval" and voucher["VoucherNo"] == 9
    (approved,) = after.json()["value"]
    assert (approved["Objstate"], approved["FirstApprover"]) == ("Confirmed", "APPROVER1")


async def test_lean_profile_refuses_fields_it_does_not_have() -> None:
    sim = IfsSimulator(profile="lean")
    sim.add("order", OrderNo="P1")

    with pytest.raises(ValueError, match="CostCenter"):
        sim.add("order", CostCenter="CC100")
    with pytest.raises(ValueError, match="VendorName"):
        sim.update("order", {"OrderNo": "P1"}, VendorName="x")
    row = sim.get("order", {"OrderNo": "P1"})

    assert row is not None and "CostCenter" not in row and "VendorName" not in row


async def test_admin_http_api_takes_canonical_names_in_every_profile() -> None:
    sim = IfsSimulator(profile="renamed")
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as http:
        created = await http.post("/_sim/invoice", json={"InvoiceId": 77, "GrossCurrAmount": 99.5})
        patched = await http.patch("/_sim/invoice", json={"key": {"Company": "10", "InvoiceId": 77},
                                                         "IdentityName": "Svea Kemi AB"})
        served = (await get(http, set_path(sim.profile["invoice"], "(Company='10',InvoiceId=77)"))).json()
        approved = await http.post("/_sim/invoice/approve", json={"key": {"Company": "10", "InvoiceId": 77}})
        stats = (await http.get("/_sim/stats")).json()

    assert created.status_code == 201 and created.json()["GrossCurrAmount"] == 99.5
    assert patched.json()["IdentityName"] == "Svea Kemi AB"
    assert (served["GrossAmount"], served["SupplierName"], served["AuthorizationStatus"]) == (
        99.5, "Svea Kemi AB", "AWAITAUTH"
    )
    assert approved.json()["Objstate"] == "PostedAuth" and approved.json()["AuthStatus"] is None
    assert stats["records"]["invoice"] == {"total": 1, "pending": 0, "by_state": {"PostedAuth": 1}}


# ---------------------------------------------------------------- wrong names answer like IFS


@pytest.mark.parametrize("option", ["$select", "$filter", "$orderby"])
@pytest.mark.parametrize(
    ("profile_name", "kind", "canonical"),
    [("renamed", RecordKind.ORDER, "GrossAmtCurr"), ("renamed", RecordKind.VOUCHER, "Userid"),
     ("renamed", RecordKind.INVOICE, "AuthStatus"), ("lean", RecordKind.INVOICE, "NetCurrAmount"),
     ("default", RecordKind.ORDER, "GrossAmount")],
    indirect=["profile_name"],
)
async def test_a_property_the_profile_lacks_is_400_naming_its_type(
    sim: IfsSimulator, client: httpx.AsyncClient, kind: RecordKind, canonical: str, option: str
) -> None:
    names = sim.profile[kind]
    value = f"{canonical} eq null" if option == "$filter" else canonical

    response = await get(client, set_path(names), **{option: value})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Malformed Request."
    assert error_detail(response) == (
        f"The property '{canonical}', used in a query expression, is not defined in type "
        f"'{names.entity_type_name}'."
    )


@pytest.mark.parametrize("profile_name", ["renamed"], indirect=True)
async def test_enum_literal_where_states_are_strings_is_400_naming_the_type(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    sim.add("order")
    names = sim.profile["order"]
    literal = "IfsApp.PurchaseOrderHandling.PurchaseOrderState'Planned'"

    enum = await get(client, set_path(names), **{"$filter": f"Status eq {literal}"})
    plain = await get(client, set_path(names), **{"$filter": "Status eq 'Planned'"})

    assert enum.status_code == 400
    assert "IfsApp.PurchaseOrderHandling.PurchaseOrderState" in error_detail(enum)
    assert [r["Status"] for r in plain.json()["value"]] == ["Planned"]


@pytest.mark.parametrize("profile_name", ["lean"], indirect=True)
async def test_plain_string_or_default_enum_name_where_profile_renamed_the_enum_is_400(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    sim.add("order")
    path = set_path(sim.profile["order"])

    plain = await get(client, path, **{"$filter": "Objstate eq 'Planned'"})
    default_enum = await get(
        client, path, **{"$filter": "Objstate eq IfsApp.PurchaseOrderHandling.PurchaseOrderState'Planned'"}
    )
    own = await get(
        client, path, **{"$filter": "Objstate eq IfsApp.PurchaseOrderHandling.PurchaseOrderStatus'Planned'"}
    )

    assert (plain.status_code, default_enum.status_code, own.status_code) == (400, 400, 200)
    undefined = "The type 'IfsApp.PurchaseOrderHandling.PurchaseOrderState' is not defined"
    assert undefined in error_detail(default_enum)
    assert len(own.json()["value"]) == 1


@pytest.mark.parametrize(
    ("profile_name", "path", "code"),
    [
        ("renamed", "PurchaseOrderHandling.svc/PurchaseOrderSet", "ODP_RESOURCE_NOTFOUND"),
        ("renamed", "ManualSupplierInvoiceHandling.svc/$metadata", "ODP_METADATA_NOTFOUND"),
        ("renamed", "ApproveVouchersHandling.svc/VoucherApprovalSet", "ODP_METADATA_NOTFOUND"),
        ("lean", "ManualSupplierInvoiceHandling.svc/ManualSupplierInvoiceSet", "ODP_METADATA_NOTFOUND"),
        ("default", "SupplierInvoiceHandling.svc/$metadata", "ODP_METADATA_NOTFOUND"),
    ],
    indirect=["profile_name"],
)
async def test_default_names_in_another_profile_are_not_found(
    client: httpx.AsyncClient, path: str, code: str
) -> None:
    response = await get(client, f"{ROOT}/{path}")

    message = {"ODP_RESOURCE_NOTFOUND": "Resource not found.", "ODP_METADATA_NOTFOUND": "Metadata not found."}
    assert response.status_code == 404
    assert (response.json()["error"]["code"], response.json()["error"]["message"]) == (code, message[code])


# ---------------------------------------------------------------- approval lines


async def test_navigation_answers_with_profile_names_or_404(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    invoice = sim.add("invoice", InvoiceId=105)
    order = sim.add("order", OrderNo="P5")
    names = sim.profile["invoice"]
    default_nav = await get(client, set_path(names, "(Company='10',InvoiceId=105)/AuthorizerArray"))
    if names.nav is None:
        assert sim.nav_rows("invoice", {"Company": "10", "InvoiceId": invoice["InvoiceId"]}) == []
        assert default_nav.status_code == 404
        assert default_nav.json()["error"]["code"] == "ODP_RESOURCE_NOTFOUND"
        assert error_detail(default_nav) == (
            f"Navigation property 'AuthorizerArray' is not defined in type '{names.entity_type_name}'."
        )
        return
    sim.approve_step("order", {"OrderNo": "P5"}, by="GRETA")
    order_names = sim.profile["order"]
    assert order_names.nav is not None and names.nav is not None
    key = order_names.field("OrderNo")

    lines = await get(client, set_path(names, f"(Company='10',InvoiceId=105)/{names.nav.name}"))
    steps = await get(client, set_path(order_names, f"({key}='P5')/{order_names.nav.name}"))
    every_line = await get(client, f"{ROOT}/{order_names.projection}.svc/{order_names.nav.entity_type}Set")

    canonical = sim.nav_rows("invoice", {"Company": "10", "InvoiceId": 105})
    assert lines.json()["value"] == [names.nav.to_profile(line) for line in canonical]
    assert all(line["Objstate"] == "Unacknowledged" for line in canonical)
    first = steps.json()["value"][0]
    assert first[str(order_names.nav.field("ApproverSign"))] == "GRETA"
    assert first[str(order_names.nav.field("OrderNo"))] == order["OrderNo"]
    assert every_line.json()["value"] == steps.json()["value"]
    if sim.profile.name != "default":
        assert default_nav.status_code == 404


# ---------------------------------------------------------------- catalogue and decoys


async def test_catalogue_lists_projections_or_is_missing(
    sim: IfsSimulator, client: httpx.AsyncClient
) -> None:
    path = f"{ROOT}/AllProjections.svc/Projections"

    response = await get(client, path)
    one = await get(client, path, **{"$filter": "ProjectionName eq 'PurchaseOrderHandling'"})
    integration = await get(client, path.replace("/main/", "/int/"))
    metadata = await get(client, f"{ROOT}/AllProjections.svc/$metadata")

    if sim.profile.catalogue is None:
        assert (response.status_code, integration.status_code, metadata.status_code) == (404, 404, 404)
        assert response.json()["error"] == {"code": "ODP_METADATA_NOTFOUND", "message": "Metadata not found."}
        return
    body = response.json()
    assert body["@odata.context"].endswith("/AllProjections.svc/$metadata#Projections")
    assert all(set(entry) == {"ProjectionName", "Description", "ApiClass"} for entry in body["value"])
    listed = [entry["ProjectionName"] for entry in body["value"]]
    assert set(sim.profile.projections) < set(listed)
    assert [e["ProjectionName"] for e in one.json()["value"]] == ["PurchaseOrderHandling"]
    assert integration.json()["value"] == body["value"]
    assert '<EntitySet Name="Projections" EntityType="IfsApp.AllProjections.ProjectionInfo"/>' in metadata.text
    unrelated = next(p for p in listed if p not in sim.profile.projections)
    assert (await get(client, f"{ROOT}/{unrelated}.svc/$metadata")).status_code == 404


@pytest.mark.parametrize("profile_name", ["renamed"], indirect=True)
async def test_decoy_reference_sets_are_queryable(client: httpx.AsyncClient) -> None:
    base = f"{ROOT}/SupplierInvoiceHandling.svc"

    service = await get(client, f"{base}/")
    suppliers = await get(client, f"{base}/Reference_SupplierInfo", **{"$filter": "SupplierId eq 'V1003'"})
    by_key = await get(client, f"{base}/Reference_SupplierInfo('V1003')", **{"$select": "Name"})
    states = await get(client, f"{base}/Reference_SupplierInvoiceStateLov", **{"$orderby": "InvoiceState"})
    wrong = await get(client, f"{base}/Reference_SupplierInfo", **{"$select": "VendorName"})

    assert {s["name"] for s in service.json()["value"]} >= {"SupplierInvoices", "Reference_SupplierInfo"}
    found = [(r["SupplierId"], r["Name"]) for r in suppliers.json()["value"]]
    assert found == [("V1003", "Müller Hydraulik GmbH")]
    assert by_key.json()["Name"] == "Müller Hydraulik GmbH" and by_key.headers["ETag"].startswith('W/"')
    assert [r["InvoiceState"] for r in states.json()["value"]][:2] == ["Cancelled", "PaidPosted"]
    assert wrong.status_code == 400 and "IfsApp.SupplierInvoiceHandling.SupplierInfo" in error_detail(wrong)


# ---------------------------------------------------------------- profiles as data, switches, CLI


def test_a_profile_cannot_drop_what_the_pending_rule_reads() -> None:
    renamed = get_profile("renamed")
    invoice = renamed["invoice"]

    def with_invoice_fields(fields: dict[str, str | None]) -> dict[RecordKind, KindNames]:
        changed = KindNames(projection=invoice.projection, entity_set=invoice.entity_set,
                            entity_type=invoice.entity_type, fields=fields)
        return {**renamed.kinds, RecordKind.INVOICE: changed}

    with pytest.raises(ValueError, match="cannot drop AuthStatus"):
        Profile("broken", "", with_invoice_fields({"AuthStatus": None}))
    with pytest.raises(ValueError, match="must keep the Company field"):
        Profile("broken", "", with_invoice_fields({"Company": "CompanyId"}))
    with pytest.raises(ValueError, match="two canonical fields map to one name"):
        KindNames(fields={"Identity": "SupplierId", "IdentityName": "SupplierId"})
    with pytest.raises(ValueError, match="SupplierInvoice: two fields would be served as Currency"):
        IfsSimulator(profile=Profile("clash", "", with_invoice_fields({"InvoiceNo": "Currency"})))
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        IfsSimulator(profile="nope")
    assert set(PROFILES) >= {"default", "renamed", "lean"}


async def test_rejected_state_filter_names_the_profile_state_field() -> None:
    sim = IfsSimulator(profile="renamed", reject_objstate_filter=True)
    sim.add("invoice")
    async with sim, httpx.AsyncClient(base_url=sim.base_url) as http:
        path = set_path(sim.profile["invoice"])
        refused = await get(http, path, **{"$filter": "InvoiceState eq 'Preliminary'"})
        allowed = await get(http, path, **{"$filter": "AuthorizationStatus eq 'AWAITAUTH'"})

    assert refused.status_code == 400 and "InvoiceState" in error_detail(refused)
    assert len(allowed.json()["value"]) == 1


async def test_cli_serves_the_chosen_profile() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.ifs", "--port", "0", "--profile", "lean", "--seed-orders", "2",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 30)).decode() for _ in range(3)]
        base_url = lines[0].split()[3]
        async with httpx.AsyncClient(base_url=base_url) as http:
            token = (await http.post(TOKEN_PATH, data=CREDENTIALS)).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            orders = await http.get(f"{ROOT}/PurchaseOrderHandling.svc/PurchaseOrderSet", headers=headers)
            lines_404 = await http.get(
                f"{ROOT}/PurchaseOrderHandling.svc/PurchaseOrderSet('P1001')/PurchaseOrderApprovalArray",
                headers=headers,
            )
    finally:
        process.terminate()
        await process.wait()

    assert "profile lean" in lines[0]
    assert [r["OrderNo"] for r in orders.json()["value"]] == ["P1001", "P1002"]
    assert all("CostCenter" not in r and "VendorName" not in r for r in orders.json()["value"])
    assert lines_404.status_code == 404
    assert all(line.startswith("order") and "V10" in line for line in lines[1:])


async def test_every_profile_requires_a_bearer_token(sim: IfsSimulator, client: httpx.AsyncClient) -> None:
    names = sim.profile["voucher"]

    anonymous = await client.get(set_path(names))
    with_token = await client.get(set_path(names), headers=await bearer(client))

    assert (anonymous.status_code, with_token.status_code) == (401, 200)
