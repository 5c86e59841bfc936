"""Poll engine against the IFS simulator over HTTP: paging, diff, resolved/changed, bad rows, outages."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from bot.status import build_status
from core.domain import Binding, ChannelRef, EventType, RecordKind
from pollers.engine import Poller
from pollers.ifs_client import IfsClient, IfsClientConfig
from pollers.sources import DEFAULT_SOURCES, build_sources
from store.audit import AuditLog
from store.bindings import Bindings
from store.channels import Channels
from store.db import open_database
from store.poll_writer import PollWriter
from store.records import load_record
from store.seen import Seen
from tests.conftest import new_database

ORDER = RecordKind.ORDER


class Harness:
    def __init__(self, db, client, poller):
        self.db, self.client, self.poller = db, client, poller

    async def events(self, etype: str | None = None) -> int:
        sql = "SELECT count(*) FROM events" + (" WHERE type = ?" if etype else "")
        return int(await self.db.scalar(sql, (etype,) if etype else ()))

    async def deliveries(self) -> int:
        return int(await self.db.scalar("SELECT count(*) FROM deliveries"))


@pytest.fixture
async def harness(tmp_path, ifs):
    made = []

    async def make(*, page_size: int = 5000, details_limit: int = 50, sources=None, retry_attempts: int = 6,
                   companies=("10",)):
        db = await open_database(new_database(tmp_path / f"p{len(made)}.sqlite3"))
        from core.retry import RetryPolicy
        client = IfsClient(IfsClientConfig(base_url=ifs.base_url, realm="ifs", client_id="notifier",
                                           client_secret="notifier-secret",
                                           retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=retry_attempts,
                                                             max_elapsed=10)))
        async with db.transaction() as conn:
            await Channels(db).upsert(conn, ChannelRef("19:c@thread.tacv2", "t", "team", "http://127.0.0.1:1/"))
            for company in companies:
                await Bindings(db).put(conn, Binding("19:c@thread.tacv2", company))
        poller = Poller(client=client, sources=sources or DEFAULT_SOURCES, seen=Seen(db), bindings=Bindings(db),
                        writer=PollWriter(db), audit=AuditLog(db), ifs_base_url=ifs.base_url, page_size=page_size,
                        details_limit=details_limit)
        h = Harness(db, client, poller)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.client.aclose()
        await h.db.close()


def corrupt(sim, kind: RecordKind, key: tuple, **raw) -> None:
    """Put values no coercion would allow into a served row, as a broken projection could send them."""
    sim._rows[kind][key].update(raw)
    sim._touch(kind)


def list_requests(ifs, entity_set: str):
    return [r for r in ifs.data_requests(entity_set) if "$top" in r.query]


async def test_12000_records_in_three_pages_without_duplicates(ifs, harness):
    ifs.bulk_generate("order", 12_000, company="10")
    h = await harness(page_size=5000)
    result = await h.poller.poll(ORDER, "10")
    assert result.ok, result.error
    assert len(list_requests(ifs, "PurchaseOrderSet")) == 3
    assert (result.pending, result.new, await h.events("new")) == (12_000, 12_000, 12_000)
    assert await h.db.scalar("SELECT count(DISTINCT record_id) FROM events") == 12_000
    assert await h.deliveries() == 12_000 == result.deliveries  # pages written two at a time, all counted
    # per-record approval details only for the first few (the rest go out in a digest anyway)
    assert len(ifs.data_requests("PurchaseOrderApprovalArray")) == 50


async def test_changed_resolved_and_quiet_repoll(ifs, harness):
    first = ifs.add_order(company="10")
    second = ifs.add_order(company="10")
    h = await harness()
    assert (await h.poller.poll(ORDER, "10")).new == 2

    quiet = await h.poller.poll(ORDER, "10")
    assert (quiet.new, quiet.changed, quiet.resolved) == (0, 0, 0)

    ifs.update("order", {"OrderNo": first["OrderNo"]}, GrossAmtCurr=999.0)
    ifs.approve("order", {"OrderNo": second["OrderNo"]}, by="MARIA")
    result = await h.poller.poll(ORDER, "10")
    assert (result.new, result.changed, result.resolved) == (0, 1, 1)
    row = await h.db.fetchone("SELECT record FROM events WHERE type = 'resolved'")
    assert load_record(row[0]).state == "Released"
    changed = await h.db.fetchone("SELECT record, previous_state FROM events WHERE type = 'changed'")
    assert load_record(changed[0]).amount == Decimal("999")

    again = await h.poller.poll(ORDER, "10")
    assert (again.new, again.changed, again.resolved) == (0, 0, 0)
    assert await h.events() == 4


async def test_approval_chain_read_for_new_records(ifs, harness):
    order = ifs.add_order(company="10")
    h = await harness()
    await h.poller.poll(ORDER, "10")
    record = load_record(await h.db.scalar("SELECT record FROM events"))
    assert record.approvers and record.number == order["OrderNo"]
    assert record.approval_step.startswith("step 1 of")


async def test_bad_rows_are_quarantined_and_the_rest_processed(ifs, harness):
    good = [ifs.add_invoice(company="10") for _ in range(3)]
    bad = ifs.add_invoice(company="10")
    corrupt(ifs, RecordKind.INVOICE, ("10", bad["InvoiceId"]), GrossCurrAmount="lots")
    h = await harness()
    result = await h.poller.poll(RecordKind.INVOICE, "10")
    assert result.ok and result.new == 3 and result.bad == 1
    entries = await AuditLog(h.db).recent(category="record")
    assert entries and entries[0].detail["field"] == "GrossCurrAmount"
    assert str(bad["InvoiceId"]) in entries[0].record_id
    assert await Seen(h.db).quarantine_counts() == {("invoice", "10"): 1}
    assert len(good) == 3

    # still bad at the next poll: still set aside, counted again; status shows it for that source
    again = await h.poller.poll(RecordKind.INVOICE, "10")
    assert again.bad == 1 and await h.db.scalar("SELECT count FROM quarantine") == 2
    view = await build_status(h.db, None, channel_id=None, now=0.0)
    assert [(s.name, s.quarantined) for s in view.sources] == [("invoices · company 10", 1)]
    assert "1 unreadable rows set aside" in view.as_text()

    # repaired in IFS: the row is read as new and released from quarantine
    ifs.update("invoice", {"Company": "10", "InvoiceId": bad["InvoiceId"]}, GrossCurrAmount=12.5)
    fixed = await h.poller.poll(RecordKind.INVOICE, "10")
    assert (fixed.new, fixed.bad) == (1, 0)
    assert await Seen(h.db).quarantine_counts() == {}
    assert (await build_status(h.db, None, channel_id=None, now=0.0)).sources[0].quarantined == 0


@pytest.mark.parametrize("field, value, problem", [
    ("InvoiceDate", "2026-02-30", "not a date"), ("GrossCurrAmount", 1e300, "amount out of range"),
    ("IdentityName", {"nested": 1}, "expected text"), ("DueDate", 20261127, "date is not text")])
async def test_one_bad_row_in_a_page_read_column_by_column(ifs, harness, field, value, problem):
    """Pages are shaped column by column; a page with one bad value in some column still records every
    other row (exactly as row by row) and quarantines that one row, naming the field."""
    rows = [ifs.add_invoice(company="10") for _ in range(6)]
    corrupt(ifs, RecordKind.INVOICE, ("10", rows[2]["InvoiceId"]), **{field: value})
    h = await harness(page_size=4, details_limit=0)
    result = await h.poller.poll(RecordKind.INVOICE, "10")
    assert (result.ok, result.new, result.bad) == (True, 5, 1)
    entries = await AuditLog(h.db).recent(category="record")
    assert [(e.detail["field"], e.detail["problem"]) for e in entries] == [(field, problem)]
    stored = [load_record(r[0]) for r in await h.db.fetchall("SELECT record FROM events ORDER BY id")]
    mapper = h.poller.mapper(RecordKind.INVOICE)
    want = []
    for row in rows[:2] + rows[3:]:
        served = await h.client.get_by_key(mapper.spec.projection, mapper.spec.entity_set,
                                           {"Company": "10", "InvoiceId": row["InvoiceId"]})
        key, etag, _ = mapper.key_and_etag(served)
        want.append(mapper.map(served, key, etag))
    assert stored == want
    again = await h.poller.poll(RecordKind.INVOICE, "10")
    assert (again.new, again.changed, again.resolved, again.bad) == (0, 0, 0, 1)


async def test_a_record_leaving_is_noticed_when_a_new_row_has_a_broken_step(ifs, harness):
    """Which seen records left is asked of SQLite whenever fewer of them were compared than were
    pending: a row present in IFS but refused before comparison (a unit separator in its step) must not
    stand in for the record that left."""
    h = await harness(sources=build_sources({"order": {"step_field": "BuyerCode"}}), details_limit=0)
    first = ifs.add_order(company="10", BuyerCode="JONAS")
    assert (await h.poller.poll(ORDER, "10")).new == 1
    ifs.approve("order", {"OrderNo": first["OrderNo"]})
    broken = ifs.add_order(company="10", BuyerCode="JO\x1fNAS")
    result = await h.poller.poll(ORDER, "10")
    assert (result.new, result.resolved, result.bad) == (0, 1, 1)
    entries = await AuditLog(h.db).recent(category="record")
    assert [(e.record_id.endswith(broken["OrderNo"]), e.detail["problem"]) for e in entries] == [
        (True, "control character")]


async def test_client_side_state_filter_for_tenants_rejecting_objstate(tmp_path, harness):
    from simulator.ifs import IfsSimulator

    sim = IfsSimulator(reject_objstate_filter=True)
    await sim.start()
    try:
        pending = sim.add_order(company="10")
        released = sim.add_order(company="10")
        sim.approve("order", {"OrderNo": released["OrderNo"]})
        h = await harness()
        h.client = IfsClient(IfsClientConfig(base_url=sim.base_url, realm="ifs", client_id="notifier",
                                             client_secret="notifier-secret"))
        h.poller.client = h.client
        strict = await h.poller.poll(ORDER, "10")
        assert not strict.ok and "400" in strict.error
        h.poller.sources = build_sources({"order": {"server_state_filter": False}})
        h.poller._mappers.clear()
        result = await h.poller.poll(ORDER, "10")
        assert result.ok and result.new == 1
        assert pending["OrderNo"] in await h.db.scalar("SELECT record FROM events")
    finally:
        await sim.stop()


async def test_429_storm_completes_the_cycle(ifs, harness):
    ifs.bulk_generate("order", 30, company="10")
    ifs.faults.fail_next(4, status=429, retry_after=0.01)
    h = await harness(page_size=10, details_limit=0)
    result = await h.poller.poll(ORDER, "10")
    assert result.ok and result.new == 30
    assert h.client.stats["throttled"] >= 4


async def test_a_listing_failing_midway_keeps_the_pages_read_and_the_next_poll_adds_only_the_rest(ifs, harness):
    ifs.bulk_generate("order", 25, company="10")
    ifs.faults.fail_next(1, status=400, code="BAD_PAGE", path="$skip=20")  # 400: no retry, the listing fails
    h = await harness(page_size=10, details_limit=0)
    failed = await h.poller.poll(ORDER, "10")
    assert not failed.ok and "BAD_PAGE" in (failed.error or "")
    # the two pages read before the failure were written (the second while the third was being fetched)
    assert (await h.events("new"), await h.deliveries()) == (20, 20)
    again = await h.poller.poll(ORDER, "10")
    assert again.ok and (again.new, again.changed, again.resolved) == (5, 0, 0)
    assert await h.db.scalar("SELECT count(DISTINCT record_id) FROM events") == 25


async def test_a_page_write_failing_while_the_listing_fails_reports_the_listing_error(ifs, harness, caplog):
    ifs.bulk_generate("order", 25, company="10")
    ifs.faults.fail_next(1, status=400, code="BAD_PAGE", path="$skip=20")
    h = await harness(page_size=10, details_limit=0)
    second_page = sorted(r["OrderNo"] for r in ifs.rows("order"))[10]
    refused = f"'order:10:OrderNo={second_page}'"
    async with h.db.transaction() as conn:  # the database refuses the second page's events
        if h.db.dialect == "sqlite":
            await conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.record_id = {refused}"
                               " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        else:
            await conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                               " $$ BEGIN RAISE EXCEPTION 'disk trouble'; END $$")
            await conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW"
                               f" WHEN (NEW.record_id = {refused}) EXECUTE FUNCTION refuse()")
    caplog.set_level(logging.ERROR, logger="pollers.engine")
    result = await h.poller.poll(ORDER, "10")
    assert not result.ok and "BAD_PAGE" in (result.error or "")
    assert any("writing a page of order failed" in r.getMessage() for r in caplog.records)
    assert await h.events("new") == 10  # the first page; the second was refused whole
    assert await h.db.scalar("SELECT last_error FROM sources WHERE kind = 'order'") == result.error


async def test_a_page_never_carries_two_changes_for_one_record(ifs, harness):
    h = await harness()
    rec = {"kind": "order", "company": "10", "key": "OrderNo=P1", "number": "P1", "state": "Planned", "etag": "e"}
    with pytest.raises(ValueError):
        await h.poller.writer.apply(ORDER, "10", [(EventType.NEW, rec, None, ""),
                                                  (EventType.CHANGED, {**rec, "etag": "f"}, "Planned", "")], [])
    assert await h.events() == 0


async def test_outage_logs_unavailable_once_and_recovered_once(ifs, harness, caplog):
    ifs.add_order(company="10")
    h = await harness(retry_attempts=2)
    caplog.set_level(logging.INFO, logger="pollers.engine")
    for _ in range(3):
        ifs.faults.fail_next(2, status=503)
        assert not (await h.poller.poll(ORDER, "10")).ok
    ifs.faults.drop_next(2)
    assert not (await h.poller.poll(ORDER, "10")).ok
    result = await h.poller.poll(ORDER, "10")
    assert result.ok and result.new == 1
    await h.poller.poll(ORDER, "10")
    down = [r for r in caplog.records if "IFS unavailable" in r.getMessage()]
    up = [r for r in caplog.records if "IFS recovered" in r.getMessage()]
    assert (len(down), len(up)) == (1, 1)
    actions = [e.action for e in await AuditLog(h.db).recent(limit=100, category="poll")]
    assert actions.count("ifs unavailable") == 1 and actions.count("ifs recovered") == 1


async def test_min_amount_and_cost_centre_bindings_filter_deliveries(ifs, harness):
    ifs.add_order(company="10", GrossAmtCurr=50.0, CostCenter="CC1")
    ifs.add_order(company="10", GrossAmtCurr=5000.0, CostCenter="CC1")
    ifs.add_order(company="10", GrossAmtCurr=5000.0, CostCenter="CC2")
    h = await harness()
    async with h.db.transaction() as conn:
        await Bindings(h.db).put(conn, Binding("19:c@thread.tacv2", "10", cost_centers=frozenset({"CC1"}),
                                               min_amount=Decimal("1000")))
    result = await h.poller.poll(ORDER, "10")
    assert result.new == 3 and result.deliveries == 1


async def test_only_bound_companies_are_polled(ifs, harness):
    ifs.add_order(company="10")
    twenty = ifs.add_order(company="20")
    h = await harness(companies=("20",))
    assert await h.poller.bindings.companies() == ["20"]
    result = await h.poller.poll(ORDER, "20")
    assert (result.new, result.deliveries) == (1, 1)
    assert [r[0] for r in await h.db.fetchall("SELECT record_id FROM events")] == [f"order:20:OrderNo={twenty['OrderNo']}"]
    assert all("Company eq '20'" in r.query.get("$filter", "") for r in list_requests(ifs, "Set"))


async def test_approval_progress_on_the_lines_updates_records_whose_card_is_in_a_channel(ifs, harness):
    def multi_step_order() -> dict:
        for _ in range(50):  # the simulator draws 1-3 approval lines per order
            order = ifs.add_order(company="10")
            if len(ifs.nav_rows("order", {"OrderNo": order["OrderNo"]})) >= 2:
                return order
        raise AssertionError("no multi-step order generated")

    carded, quiet = multi_step_order(), multi_step_order()
    h = await harness()
    await h.poller.poll(ORDER, "10")
    async with h.db.transaction() as conn:
        from core.domain import PostedCard
        from store.outbox import Outbox
        await Outbox(h.db).save_card(conn, f"order:10:OrderNo={carded['OrderNo']}", "19:c@thread.tacv2",
                                     PostedCard("19:c@thread.tacv2;messageid=1", "1"))
    assert (await h.poller.poll(ORDER, "10")).changed == 0  # lines read again, nothing moved
    for order in (carded, quiet):
        ifs.approve_step("order", {"OrderNo": order["OrderNo"]}, by="MARIA")
    result = await h.poller.poll(ORDER, "10")
    assert (result.changed, result.resolved) == (1, 0)  # only the record people can see is re-read
    row = await h.db.fetchone("SELECT record_id, record FROM events WHERE type = 'changed'")
    assert carded["OrderNo"] in row[0] and "step 2 of" in row[1] and '"status":"Approved"' in row[1]
    assert (await h.poller.poll(ORDER, "10")).changed == 0
