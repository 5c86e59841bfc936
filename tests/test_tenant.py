"""Meeting the tenant: $metadata read, names validated with precise lines, check and discover as a new user
runs them, a service that degrades instead of failing, and no traceback for a broken environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from aiohttp import web

from cards import inert
from core.domain import RecordKind
from core.secret import Secret
from pollers.metadata import parse_metadata
from pollers.sources import DEFAULT_SOURCES, build_sources
from pollers.tenant import validate
from simulator.teams_client import CHANNEL
from tests.conftest import make_service
from tests.test_bot_commands import say

ROOT = Path(__file__).resolve().parent.parent

# names a tenant might have that differ from what is configured: one required, two optional
MISNAMED = """
[sources.invoice]
details = [["Supplier invoice no", "InvoiceNo"], ["Recipient", "InvoiceRecipent"]]
pending_equals = [["AuthStatu", "AWAITAUTH"]]
[sources.voucher]
party_id = "UserId"
[sources.order.approvals]
navigation = "ApprovalArray"
"""
MISNAMED_LINES = [
    "warn [sources.order] approvals.navigation: ApprovalArray is not a navigation of PurchaseOrderSet: cards come"
    " without the approval chain; did you mean PurchaseOrderApprovalArray? (left out meanwhile)",
    "FAIL [sources.invoice] pending_equals: AuthStatu does not exist in ManualSupplierInvoiceSet; did you mean"
    " AuthStatus?",
    "warn [sources.invoice] details: InvoiceRecipent (Recipient) does not exist in ManualSupplierInvoiceSet; did you"
    " mean InvoiceRecipient? (left out meanwhile)",
    "warn [sources.voucher] party_id: UserId does not exist in VoucherApprovalSet; did you mean Userid? (left out"
    " meanwhile)",
]


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER")}
    full.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=full)


async def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(run_cli, *args, **kwargs)


async def configured(tmp_path: Path, base_url: str, extra: str = "", realm: str = "ifs") -> str:
    """A config file and a database holding the IFS secrets, as `secrets set` leaves them."""
    svc = await make_service(tmp_path, base_url, extra=extra)
    await svc.ifs.aclose()
    await svc.db.close()
    cfg = tmp_path / "notifier.toml"
    if realm != "ifs":
        cfg.write_text(cfg.read_text().replace('realm = "ifs"', f'realm = "{realm}"'))
    return str(cfg)


async def test_metadata_is_read_with_sets_keys_enums_and_navigations(ifs):
    import httpx

    from tests.test_simulator_ifs import bearer

    async with httpx.AsyncClient(base_url=ifs.base_url) as http:
        doc = await http.get("/main/ifsapplications/projection/v1/PurchaseOrderHandling.svc/$metadata",
                             headers=await bearer(http))
    md = parse_metadata("PurchaseOrderHandling", doc.content)
    entity = md.entity("PurchaseOrderSet")
    assert entity is not None and entity.keys == ("OrderNo",)
    assert entity.properties["GrossAmtCurr"] == "Edm.Decimal"
    assert entity.properties["Objstate"] == "IfsApp.PurchaseOrderHandling.PurchaseOrderState"
    assert "Planned" in md.enums["IfsApp.PurchaseOrderHandling.PurchaseOrderState"]
    assert entity.navigations["PurchaseOrderApprovalArray"][1] is True
    assert md.navigation_target(entity, "PurchaseOrderApprovalArray").keys[-1] == "SequenceNo"


def test_validation_leaves_out_optional_names_and_fails_only_on_required_ones():
    from simulator.ifs import metadata_document as _edmx

    spec = build_sources({"invoice": {"cost_center": "CostCentre", "due_date": "InvoiceNo",
                                      "approvals": {"decided_at": "DecidedWhen"}}})[RecordKind.INVOICE]
    v = validate(spec, parse_metadata(spec.projection, _edmx(spec.projection)))
    assert not v.fatal
    assert (v.spec.cost_center, v.spec.due_date, v.spec.approvals.decided_at) == (None, None, None)
    assert "CostCentre" not in v.spec.select and "CostCenter" not in v.spec.select
    assert [p.line() for p in v.problems] == [
        "[sources.invoice] due_date: InvoiceNo is Edm.String in ManualSupplierInvoiceSet, not a date; did you mean"
        " DueDate? (left out meanwhile)",
        "[sources.invoice] cost_center: CostCentre does not exist in ManualSupplierInvoiceSet; did you mean"
        " CostCenter? (left out meanwhile)",
        "[sources.invoice] approvals.decided_at: DecidedWhen does not exist in AuthorizerArray; did you mean"
        " AuthorizedDate? (left out meanwhile)",
    ]
    wrong_key = build_sources({"order": {"keys": [["OrderNo", "int"]], "state_field": "State"}})[RecordKind.ORDER]
    v = validate(wrong_key, parse_metadata(wrong_key.projection, _edmx(wrong_key.projection)))
    assert v.fatal and [p.setting for p in v.problems if p.fatal] == ["state_field", "keys"]
    assert v.fix == "[sources.order] state_field: State does not exist in PurchaseOrderSet; did you mean Objstate?"
    unchanged = DEFAULT_SOURCES[RecordKind.VOUCHER]
    v = validate(unchanged, parse_metadata(unchanged.projection, _edmx(unchanged.projection)))
    assert v.problems == () and v.spec is unchanged


async def test_check_names_every_wrong_setting_and_exits_non_zero(tmp_path, ifs):
    ifs.add_order("10")
    cfg = await configured(tmp_path, ifs.base_url, MISNAMED)
    out = await cli("--config", cfg, "check")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for expected in MISNAMED_LINES:
        assert expected in lines, (expected, out.stdout)
    assert any(line.startswith("ok   orders: PurchaseOrderHandling.svc/PurchaseOrderSet: the listing query and a read"
                               " by key answer") for line in lines), lines
    assert "Traceback" not in out.stderr


async def test_check_reads_what_the_poll_reads_and_names_the_setting_ifs_rejected(tmp_path, ifs):
    # $metadata lists the field, but the server rejects it in a query: check runs the poll's own $select
    ifs.add_voucher("10")
    cfg = await configured(tmp_path, ifs.base_url, '[sources.voucher]\nextra_select = ["Objgrants", "NotAColumn"]\n')
    out = await cli("--config", cfg, "check")
    assert ("warn [sources.voucher] extra_select: NotAColumn does not exist in VoucherApprovalSet (left out"
            " meanwhile)") in out.stdout.splitlines(), out.stdout
    assert out.returncode == 0


async def test_discover_writes_a_config_that_check_accepts(tmp_path, ifs):
    for kind in RecordKind:
        ifs.add(kind, "10")
    cfg = await configured(tmp_path, ifs.base_url, MISNAMED)
    written = tmp_path / "tenant.toml"
    out = await cli("--config", cfg, "discover", "--company", "10", "--write", str(written))
    assert out.returncode == 0, out.stderr
    assert "PurchaseOrderHandling: " in out.stderr and f"wrote {written}" in out.stderr
    text = written.read_text()
    assert 'entity_set = "ManualSupplierInvoiceSet"' in text and 'pending_equals = [["AuthStatus", "AWAITAUTH"]]' in text
    assert 'link_page = "PurchaseOrder/Form"  # guess' in text
    again = await cli("--config", cfg, "discover", "--write", str(written))
    assert again.returncode == 1 and "exists (use --force" in again.stderr
    checked = await cli("--config", str(written), "check")
    assert checked.returncode == 0, checked.stdout
    assert [line[:4] for line in checked.stdout.splitlines()].count("ok  ") == 4  # the token and three sources


async def test_service_delivers_what_exists_and_status_shows_the_fix(tmp_path, ifs, connector):
    from tests.conftest import make_service as build

    svc = await build(tmp_path, ifs.base_url, extra=MISNAMED)
    await svc.start(background=False)
    try:
        for kind in RecordKind:
            ifs.add(kind, "10")
        said = await say(svc, connector, "link company 10")
        assert "Cards will arrive for orders, vouchers. Not arriving until an admin changes the service's" \
               " configuration:" in said.text, said.text
        assert f"- invoices: {MISNAMED_LINES[1][5:]}" in said.text
        results = await svc.poll_once()
        assert sorted((r.kind.value, r.ok, r.new) for r in results) == [("order", True, 1), ("voucher", True, 1)]
        await svc.worker.run_once()
        cards = [str(p.activity.get("attachments")) for p in connector.posts(CHANNEL)]
        assert len(cards) == 2, cards  # one order and one voucher: the invoice source is not polled
        assert sum("Voucher" in c for c in cards) == 1 and sum("Purchase order" in c for c in cards) == 1, cards
        said = await say(svc, connector, "status")
        assert said.lines[0].startswith("1 of 3 sources failing"), said.lines
        assert said.text.startswith("Status: 1 of 3 sources failing, IFS reachable")
        assert f"Fix: {inert(MISNAMED_LINES[1][5:], 300)}" in said.lines, said.lines
        assert f"Left out: {inert(MISNAMED_LINES[3][5:], 300)}" in said.lines
        said = await say(svc, connector, "status invoices")
        assert said.text.startswith("Invoices: failing") and "did you mean AuthStatus?" in said.text
    finally:
        await svc.stop()
        await svc.db.close()


# --------------------------------------------------------------------------- broken environments, no traceback


async def _server(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.mark.parametrize("status,body,content_type,expected", [
    (501, "Not Implemented", "text/plain", "its IAM token endpoint answered 501"),
    (404, "<html>Not found</html>", "text/html", "no IAM answers at /auth/realms/ifs/ (HTTP 404)"),
    (200, "<html>Welcome</html>", "text/html", "answered 200 with something that is not JSON (text/html"),
])
async def test_a_base_url_that_is_not_ifs_gets_one_line(tmp_path, status, body, content_type, expected):
    async def handler(request):
        return web.Response(status=status, text=body, content_type=content_type)

    runner, url = await _server(handler)
    try:
        cfg = await configured(tmp_path, url)
        out = await cli("--config", cfg, "check")
    finally:
        await runner.cleanup()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    [line] = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert line.startswith(f"FAIL ifs.base_url: {url} does not look like IFS Cloud") and expected in line, line


async def test_wrong_realm_and_unreachable_host_each_say_so(tmp_path, ifs):
    cfg = await configured(tmp_path, ifs.base_url, realm="nope")
    out = await cli("--config", cfg, "check")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"FAIL ifs.realm: realm 'nope' does not exist at {ifs.base_url}" in out.stdout
    (tmp_path / "other").mkdir()
    cfg = await configured(tmp_path / "other", "http://127.0.0.1:9")  # the discard port: nothing listens
    out = await cli("--config", cfg, "check")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stdout.startswith("FAIL IFS unreachable at http://127.0.0.1:9: ")
    assert out.stdout.rstrip().endswith("connection failed (ConnectError: nothing accepts connections there (refused"
                                        " or unreachable))"), out.stdout


async def test_an_empty_notifier_config_and_an_unknown_enum_type_need_no_traceback(tmp_path, ifs):
    out = await cli("check", cwd=tmp_path, env={"NOTIFIER_CONFIG": ""})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stdout.startswith("FAIL ifs.base_url: not set")
    ifs.add_order("10")
    cfg = await configured(tmp_path, ifs.base_url, '[sources.order]\nenum_type = "IfsApp.Nope.State"\n'
                                                   'amount = "GrossAmount"\n')
    out = await cli("--config", cfg, "check")
    assert "Traceback" not in out.stderr and out.returncode == 0, out.stdout + out.stderr
    assert ("warn [sources.order] enum_type: IfsApp.Nope.State is not the type of Objstate (its type"
            " IfsApp.PurchaseOrderHandling.PurchaseOrderState used meanwhile)") in out.stdout.splitlines()
    polled = await cli("--config", cfg, "poll", "--once")
    assert "Traceback" not in polled.stderr
    assert "nothing to poll" in polled.stdout  # no channel linked: nothing asked of IFS


async def test_metadata_is_read_once_refreshed_daily_and_after_a_rejected_name(ifs):
    from core.clock import FakeClock

    clock = FakeClock()
    client, schema = await _schema_for(ifs, clock=clock)
    try:
        fetched = lambda: len(ifs.data_requests("PurchaseOrderHandling.svc/$metadata"))  # noqa: E731
        await asyncio.gather(schema.validate(RecordKind.ORDER), schema.validate(RecordKind.ORDER))
        await schema.validate(RecordKind.ORDER)
        assert fetched() == 1
        clock.advance(23 * 3600)
        await schema.validate(RecordKind.ORDER)
        assert fetched() == 1
        clock.advance(3600)
        await schema.validate(RecordKind.ORDER)
        assert fetched() == 2
        schema.invalidate("PurchaseOrderHandling")
        await schema.validate(RecordKind.ORDER)
        assert fetched() == 3
    finally:
        await client.aclose()


async def _schema_for(sim, clock=None, **overrides):
    from app import Credentials, make_ifs_client
    from core.settings import load_settings
    from pollers.tenant import TenantSchema

    settings = load_settings(None, env={"NOTIFIER__IFS__REALM": "ifs"})
    secrets = sim.vault_secrets()
    client = make_ifs_client(settings, Credentials(sim.base_url, secrets["ifs.client_id"],
                                                   Secret(secrets["ifs.client_secret"]), "", Secret(""), ""))
    sources = build_sources({"order": overrides}) if overrides else DEFAULT_SOURCES
    return client, TenantSchema(client, sources, clock=clock, log_problems=False)


async def test_a_missing_projection_is_answered_from_the_cache_without_its_error_growing(ifs):
    from core.errors import FatalRequestError

    client, schema = await _schema_for(ifs)
    try:
        depths = []
        for _ in range(3):
            with pytest.raises(FatalRequestError) as caught:
                await schema.metadata("NoSuchHandling")
            depths.append(len(list(traceback.walk_tb(caught.value.__traceback__))))
        assert len(ifs.data_requests("NoSuchHandling.svc/$metadata")) == 1  # a 404 is remembered
        assert depths[1] == depths[2] <= depths[0]  # (the first carries the client's frames)
    finally:
        await client.aclose()


@pytest.mark.parametrize(("metadata_none", "objversion", "setting", "by_version", "probes"), [
    (True, True, {}, True, 2),  # declared, its etags carry it, odata.metadata=none honoured
    (False, True, {}, False, 2),  # odata.metadata=none answered as minimal: rows keep their etags
    (True, False, {}, False, 0),  # Objversion not declared: nothing to ask
    (True, True, {"version_field": False}, False, 0),  # switched off
])
async def test_listings_compare_by_row_version_only_where_the_tenant_was_seen_to_allow_it(
        metadata_none, objversion, setting, by_version, probes):
    import dataclasses

    from simulator.ifs import IfsSimulator
    from simulator.profiles import DEFAULT

    profile = dataclasses.replace(DEFAULT, name="probe", metadata_none=metadata_none, objversion=objversion)
    sim = IfsSimulator(profile=profile)
    await sim.start()
    client, schema = await _schema_for(sim, **setting)
    try:
        sim.add_order(company="10")
        validation = await schema.validate(RecordKind.ORDER)
        assert not validation.problems
        assert (validation.spec.row_versions, validation.spec.versions is not None) == (by_version, by_version)
        asked = [r for r in sim.data_requests("PurchaseOrderSet") if "$top" in r.query]
        assert len(asked) == probes
        assert all(r.query["$top"] == "1" and "Objversion" in r.query["$select"] for r in asked)
        await schema.validate(RecordKind.ORDER)  # asked once per $metadata refresh, not per poll
        assert len([r for r in sim.data_requests("PurchaseOrderSet") if "$top" in r.query]) == probes
    finally:
        await client.aclose()
        await sim.stop()


async def test_an_empty_entity_set_is_not_taken_for_a_tenant_that_ignores_odata_metadata_none(ifs):
    from core.clock import FakeClock
    from pollers.tenant import VERSIONS_RETRY_SECONDS

    client, schema = await _schema_for(ifs)
    schema._clock = clock = FakeClock()
    try:
        assert not (await schema.validate(RecordKind.ORDER)).spec.row_versions  # no row to try it on
        ifs.add_order(company="10")
        assert not (await schema.validate(RecordKind.ORDER)).spec.row_versions  # not asked again at once
        clock.advance(VERSIONS_RETRY_SECONDS)
        assert (await schema.validate(RecordKind.ORDER)).spec.row_versions
    finally:
        await client.aclose()
