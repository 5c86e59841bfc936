"""Source declarations: filters with fully qualified enums, client-side twin, overrides, deep links."""

from __future__ import annotations

import pytest

from core.domain import RecordKind
from core.errors import BadRecordError, ConfigError
from pollers.mapping import RecordMapper
from pollers.sources import DEFAULT_SOURCES, build_sources


def test_pending_filter_uses_fully_qualified_enum_literals():
    voucher = DEFAULT_SOURCES[RecordKind.VOUCHER].filter_for("10")
    assert voucher == ("Company eq '10' and (Objstate eq IfsApp.ApproveVouchersHandling.VoucherState'AwaitingApproval'"
                       " or Objstate eq IfsApp.ApproveVouchersHandling.VoucherState'PartiallyApproved')")
    invoice = DEFAULT_SOURCES[RecordKind.INVOICE].filter_for("O'Neil")
    # the awaiting-authorization marker's field name is unconfirmed: no such condition unless configured
    assert invoice == "Company eq 'O''Neil' and Objstate eq IfsApp.ManualSupplierInvoiceHandling.ManSuppInvoiceState'Preliminary'"


def test_client_side_filter_is_the_twin_of_the_server_filter():
    spec = build_sources({"invoice": {"server_state_filter": False,
                                      "pending_equals": [["AuthStatus", "AWAITAUTH"]]}})[RecordKind.INVOICE]
    assert spec.filter_for("10") == "Company eq '10' and AuthStatus eq 'AWAITAUTH'"
    assert spec.is_pending({"Objstate": "Preliminary", "AuthStatus": "AWAITAUTH"})
    assert not spec.is_pending({"Objstate": "Preliminary", "AuthStatus": None})
    assert not spec.is_pending({"Objstate": "PostedAuth", "AuthStatus": "AWAITAUTH"})


@pytest.mark.parametrize("overrides,key", [
    ({"bogus": {}}, "sources.bogus"),
    ({"order": {"projection_name": "X"}}, "sources.order.projection_name"),
    ({"order": {"keys": "OrderNo"}}, "sources.order.keys"),
    ({"order": {"enabled": "yes"}}, "sources.order.enabled"),
    ({"order": {"entity_set": False}}, "sources.order.entity_set"),
    ({"order": {"keys": [["OrderNo", "text"]]}}, "sources.order.keys"),
    ({"invoice": {"details": ["Recipient"]}}, "sources.invoice.details"),
    ({"order": {"approvals": {"navigation": "X", "sequence": False}}}, "sources.order.approvals"),
])
def test_bad_overrides_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        build_sources(overrides)
    assert err.value.key == key


def test_deep_links_quote_string_keys_and_leave_numbers_bare():
    mapper = RecordMapper(DEFAULT_SOURCES[RecordKind.INVOICE], "https://acme.ifs.cloud")
    row = {"Company": "10", "InvoiceId": 105, "Objstate": "Preliminary", "@odata.etag": "W/\"x\""}
    key, etag, keys = mapper.key_and_etag(row)
    record = mapper.map(row, key, etag)
    assert mapper.link_for(record) == ("https://acme.ifs.cloud/main/ifsapplications/web/page/ManualSupplierInvoice/Form;"
                                       "$filter=InvoiceId%20eq%20105%20and%20Company%20eq%20'10'")
    order = RecordMapper(DEFAULT_SOURCES[RecordKind.ORDER], "https://acme.ifs.cloud")
    row = {"OrderNo": "P 1/2", "Company": "10", "Objstate": "Planned", "@odata.etag": "W/\"y\""}
    key, etag, keys = order.key_and_etag(row)
    assert order.link_for(order.map(row, key, etag)).endswith(";$filter=OrderNo%20eq%20'P%201%2F2'")
    assert RecordMapper(DEFAULT_SOURCES[RecordKind.ORDER], "").link_for(record) is None


def test_nul_characters_in_a_key_or_row_version_make_a_bad_record():
    mapper = RecordMapper(DEFAULT_SOURCES[RecordKind.ORDER], "https://acme.ifs.cloud")
    with pytest.raises(BadRecordError) as err:
        mapper.key_and_etag({"OrderNo": "P1\x00", "@odata.etag": "W/\"x\""})
    assert (err.value.field, err.value.problem) == ("OrderNo", "NUL character")
    with pytest.raises(BadRecordError) as err:
        mapper.key_and_etag({"OrderNo": "P1", "@odata.etag": "W/\"x\x00\""})
    assert err.value.field == "@odata.etag"


def test_a_unit_separator_or_nul_in_a_row_version_or_state_makes_a_bad_record():
    """A record's version is compared in SQLite as etag, state and step joined by \\x1f (and SQLite's
    JSON functions end a text at NUL): none may hold either."""
    spec = DEFAULT_SOURCES[RecordKind.VOUCHER]
    mapper = RecordMapper(spec, "")
    good = {"Company": "10", "AccountingYear": 2026, "VoucherType": "J", "VoucherNo": 1,
            "Objstate": "AwaitingApproval", "@odata.etag": "W/\"1\""}
    rows = [good, {**good, "VoucherNo": 2, "@odata.etag": "W/\"\x1f\""},
            {**good, "VoucherNo": 3, "Objstate": "Awaiting\x1fApproval"}, {**good, "VoucherNo": 4, "Objstate": None},
            {**good, "VoucherNo": 5, "Objstate": "Awaiting\x00Approval"}]
    assert mapper.identify(rows) is None and mapper.identify(rows[:1]) is not None
    present: set[str] = set()
    kept, (keys, _, _, _), bad = mapper.identify_rows(rows + [good], present)
    assert kept == [good] and keys == ["Company=10^AccountingYear=2026^VoucherType=J^VoucherNo=1"]
    assert [(k.rsplit("=", 1)[1], f, p) for k, f, p in bad] == [
        ("2", "@odata.etag", "control character"), ("3", "Objstate", "control character"),
        ("4", "Objstate", "missing state"), ("5", "Objstate", "NUL character")]
    assert mapper.identify([good, rows[4]]) is None
    assert len(present) == 4  # the broken states are still present in IFS (not resolved); the repeat is skipped


def test_false_drops_an_optional_field_and_approvals_merge_with_the_default():
    spec = build_sources({"invoice": {"cost_center": False, "details": False, "enum_type": False,
                                      "approvals": {"navigation": "AuthLines", "role": False}}})[RecordKind.INVOICE]
    assert (spec.cost_center, spec.details, spec.enum_type) == (None, (), "")
    assert "CostCenter" not in spec.select
    assert (spec.approvals.navigation, spec.approvals.sequence, spec.approvals.role) == ("AuthLines", "LineNo", None)
    assert build_sources({"order": {"approvals": False}})[RecordKind.ORDER].approvals is None


def test_done_states_decide_which_lines_are_done_and_the_chain_summary():
    spec = build_sources({"invoice": {"approvals": {"done_states": ["Authorized"]}}})[RecordKind.INVOICE]
    lines = [{"LineNo": 1, "Authorizer": "ANNA", "Objstate": "Acknowledged"},
             {"LineNo": 2, "Authorizer": "OLOF", "Objstate": "Authorized"}]
    steps = RecordMapper(spec, "").approvals(lines)
    assert [s.done for s in steps] == [False, True]
    default = RecordMapper(DEFAULT_SOURCES[RecordKind.INVOICE], "").approvals(lines)
    assert [s.done for s in default] == [True, True]  # Acknowledged ends a line by default
    from pollers.mapping import summarize_chain
    assert summarize_chain(steps) == "step 2 of 2: waiting for ANNA"
    assert summarize_chain(default) == "all 2 steps done"
