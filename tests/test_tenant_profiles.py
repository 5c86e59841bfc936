"""Each tenant profile of the simulator met from nothing but base URL, realm and credentials: `discover`
writes a config, `check` accepts it, and a poll with it posts cards showing the right number, party,
amount and currency for all three kinds."""

from __future__ import annotations

import json

import pytest

import app
from cards import inert
from core.domain import RecordKind
from core.settings import load_settings
from pollers.sources import DEFAULT_SOURCES
from simulator.ifs import IfsSimulator
from simulator.teams_client import CHANNEL
from tests.test_bot_commands import say
from tests.test_tenant import cli, configured

# what each kind's card must show: (number, party, amount as shown, currency), from canonical fields set here
RECORDS = {
    RecordKind.ORDER: {"VendorNo": "V9001", "GrossAmtCurr": 1234.5, "CurrencyCode": "EUR"},
    RecordKind.INVOICE: {"Identity": "S7001", "GrossCurrAmount": 2500.0, "Currency": "SEK"},
    RecordKind.VOUCHER: {"Userid": "BRITA", "AmountInAccCurr": 777.25, "AccCurrencyCode": "USD"},
}
SHOWN = {RecordKind.ORDER: ("V9001", "EUR\xa01,234.50"), RecordKind.INVOICE: ("S7001", "SEK\xa02,500.00"),
         RecordKind.VOUCHER: ("BRITA", "USD\xa0777.25")}


def number_of(kind: RecordKind, row: dict) -> str:
    if kind is RecordKind.ORDER:
        return row["OrderNo"]
    if kind is RecordKind.INVOICE:
        return str(row["InvoiceId"])
    return f"{row['VoucherType']} {row['VoucherNo']}"


@pytest.mark.parametrize("profile", ["default", "renamed", "lean"])
async def test_discover_check_and_cards_on_each_tenant_profile(tmp_path, connector, profile):
    sim = IfsSimulator(profile=profile)
    await sim.start()
    try:
        rows = {kind: sim.add(kind, "10", **fields) for kind, fields in RECORDS.items()}
        for kind in RecordKind:  # a few more, so plain-text states have a sample to be read from
            sim.add(kind, "10")
        cfg = await configured(tmp_path, sim.base_url)
        written = tmp_path / "tenant.toml"
        found = await cli("--config", cfg, "discover", "--company", "10", "--write", str(written))
        assert found.returncode == 0, found.stderr
        checked = await cli("--config", str(written), "check", "--company", "10")
        assert checked.returncode == 0, written.read_text() + checked.stdout
        assert [line[:4] for line in checked.stdout.splitlines()].count("ok  ") == 4, checked.stdout

        svc = await app.build_service(load_settings(written, env={}))
        await svc.start(background=False)
        try:
            await say(svc, connector, "link company 10")
            results = await svc.poll_once()
            assert sorted((r.kind.value, r.ok, r.new) for r in results) == [
                ("invoice", True, 2), ("order", True, 2), ("voucher", True, 2)], results
            await svc.worker.run_once()
            cards = [json.dumps(p.activity.get("attachments"), ensure_ascii=False)
                     for p in connector.posts(CHANNEL)]
            for kind, row in rows.items():
                number = number_of(kind, row)
                party, amount = SHOWN[kind]
                shown = [c for c in cards if number in c and party in c]
                assert len(shown) == 1, (kind, number, party, cards)
                assert amount in shown[0], (kind, amount, shown[0])
            # listings carry row versions only where the tenant declares Objversion and honours
            # odata.metadata=none (default); renamed ignores odata.metadata=none, lean lacks Objversion
            assert {svc.poller.sources[k].row_versions for k in RecordKind} == {profile == "default"}
            for kind, row in rows.items():  # a change the next cycle finds, whichever marker it compares
                key = {k: row[k] for k, _ in DEFAULT_SOURCES[kind].keys}
                sim.update(kind, key, **{next(iter(RECORDS[kind])): "V9002" if kind is RecordKind.ORDER else
                                         "S7002" if kind is RecordKind.INVOICE else "BRITT"})
            again = await svc.poll_once()
            assert sorted((r.kind.value, r.new, r.changed, r.resolved) for r in again) == [
                ("invoice", 0, 1, 0), ("order", 0, 1, 0), ("voucher", 0, 1, 0)], again
            unchanged = await svc.poll_once()
            assert {(r.new, r.changed, r.resolved) for r in unchanged} == {(0, 0, 0)}
        finally:
            await svc.stop()
            await svc.db.close()
    finally:
        await sim.stop()


RENAMED_WITH_DEFAULTS = [
    "FAIL [sources.order] entity_set: PurchaseOrderSet does not exist in PurchaseOrderHandling; did you mean"
    " PurchaseOrders?",
    "FAIL [sources.invoice] projection: ManualSupplierInvoiceHandling does not exist on this tenant (or the service"
    " user may not read it); did you mean SupplierInvoiceHandling? IFS said: Metadata not found.",
    "FAIL [sources.voucher] projection: ApproveVouchersHandling does not exist on this tenant (or the service user"
    " may not read it); did you mean VoucherApprovalHandling? IFS said: Metadata not found.",
]
LEAN_WITH_DEFAULTS = [
    "warn [sources.order] enum_type: IfsApp.PurchaseOrderHandling.PurchaseOrderState is not the type of Objstate"
    " (its type IfsApp.PurchaseOrderHandling.PurchaseOrderStatus used meanwhile)",
    "warn [sources.order] party_name: VendorName does not exist in PurchaseOrderSet (left out meanwhile)",
    "warn [sources.order] cost_center: CostCenter does not exist in PurchaseOrderSet (left out meanwhile)",
    "warn [sources.order] site: Contract does not exist in PurchaseOrderSet (left out meanwhile)",
    "warn [sources.order] approvals.navigation: PurchaseOrderApprovalArray is not a navigation of PurchaseOrderSet:"
    " cards come without the approval chain (left out meanwhile)",
    "ok   orders: PurchaseOrderHandling.svc/PurchaseOrderSet: the listing query and a read by key answer as a poll"
    " needs",
    "FAIL [sources.invoice] projection: ManualSupplierInvoiceHandling does not exist on this tenant (or the service"
    " user may not read it); did you mean ManSuppInvoiceHandling? IFS said: Metadata not found.",
    "warn [sources.voucher] cost_center: CostCenter does not exist in VoucherApprovalSet (left out meanwhile)",
    "warn [sources.voucher] details: VoucherText2 (Text) does not exist in VoucherApprovalSet (left out meanwhile)",
    "ok   vouchers: ApproveVouchersHandling.svc/VoucherApprovalSet: the listing query and a read by key answer as a"
    " poll needs",
]


@pytest.mark.parametrize("profile,expected", [("renamed", RENAMED_WITH_DEFAULTS), ("lean", LEAN_WITH_DEFAULTS)])
async def test_the_default_config_on_a_mismatched_tenant(tmp_path, connector, profile, expected):
    """check names every wrong setting with the right suggestion; serve delivers every kind whose required
    names exist; status shows the failing ones with their fix."""
    sim = IfsSimulator(profile=profile)
    await sim.start()
    try:
        for kind in RecordKind:
            sim.add(kind, "10")
        cfg = await configured(tmp_path, sim.base_url)
        checked = await cli("--config", cfg, "check", "--company", "10")
        assert checked.returncode == 1
        assert checked.stdout.splitlines()[1:-1] == expected, checked.stdout

        svc = await app.build_service(load_settings(cfg, env={}))
        await svc.start(background=False)
        try:
            await say(svc, connector, "link company 10")
            results = await svc.poll_once()
            delivered = sorted(r.kind.value for r in results if r.ok and r.new == 1)
            failing = [line for line in expected if line.startswith("FAIL")]
            assert delivered == sorted({"order", "voucher"} - {k for k in ("order", "voucher")
                                                                if any(f"[sources.{k}]" in f for f in failing)})
            await svc.worker.run_once()
            assert len(connector.posts(CHANNEL)) == len(delivered)
            said = await say(svc, connector, "status")
            assert said.lines[0] == f"{len(failing)} of 3 sources failing", said.lines
            for line in failing:
                assert f"Fix: {inert(line[5:], 300)}" in said.lines, said.lines
        finally:
            await svc.stop()
            await svc.db.close()
    finally:
        await sim.stop()


async def test_the_demo_of_a_profile_polls_with_what_discover_proposes(tmp_path):
    import tomllib

    from demo import demo_config, discovered_sources
    from pollers.sources import build_sources

    sim = IfsSimulator(realm="demo", profile="lean")
    await sim.start()
    try:
        sim.add_order("10")
        text = await discovered_sources(load_settings(demo_config(tmp_path, 10.0), env={}), sim.vault_secrets())
    finally:
        await sim.stop()
    sources = build_sources(tomllib.loads(text)["sources"])
    assert sources[RecordKind.INVOICE].projection == "ManSuppInvoiceHandling"
    assert sources[RecordKind.ORDER].enum_type == "IfsApp.PurchaseOrderHandling.PurchaseOrderStatus"
    assert all(spec.approvals is None for spec in sources.values())  # the lean tenant has no approval lines


async def test_a_projection_the_tenant_lacks_is_asked_for_once_per_refresh():
    from core.clock import FakeClock
    from core.secret import Secret
    from pollers.sources import DEFAULT_SOURCES
    from pollers.tenant import TenantSchema
    from service import Credentials, make_ifs_client

    sim = IfsSimulator(profile="renamed")  # ManualSupplierInvoiceHandling does not exist there
    await sim.start()
    settings = load_settings(None, env={"NOTIFIER__IFS__REALM": "ifs"})
    secrets = sim.vault_secrets()
    client = make_ifs_client(settings, Credentials(secrets["ifs.base_url"], secrets["ifs.client_id"],
                                                   Secret(secrets["ifs.client_secret"]), "", Secret(""), ""))
    clock = FakeClock()
    schema = TenantSchema(client, DEFAULT_SOURCES, clock=clock, log_problems=False)
    asked = lambda: len(sim.data_requests("ManualSupplierInvoiceHandling.svc/$metadata"))  # noqa: E731
    try:
        for _ in range(3):  # three poll cycles
            assert (await schema.validate(RecordKind.INVOICE)).fix.startswith("[sources.invoice] projection:")
        assert asked() == 1
        clock.advance(24 * 3600)
        await schema.validate(RecordKind.INVOICE)
        assert asked() == 2
    finally:
        await client.aclose()
        await sim.stop()
