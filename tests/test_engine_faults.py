"""The poll engine against a misbehaving IFS (the simulator's faults, over HTTP): empty or short listings,
listings that never end, approval lines that cannot be read."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import unquote

import httpx
import pytest

from core.clock import FakeClock
from core.domain import Binding, ChannelRef, PostedCard, RecordKind
from core.errors import ConfigError, FatalRequestError
from core.settings import load_settings
from pollers.ifs_client import IfsClient, IfsClientConfig, ListingBounds
from pollers.sources import build_sources
from store.audit import AuditLog
from store.bindings import Bindings
from store.channels import Channels
from store.outbox import Outbox
from store.records import load_record
from tests import test_poller
from tests.conftest import CHANNEL, channel_message, post_activity
from tests.test_poller import list_requests
from tests.test_simulator_ifs import bearer

harness = test_poller.harness  # the poll engine's fixture: a poller on a SQLite file and the simulator

ORDER, INVOICE, VOUCHER = RecordKind.ORDER, RecordKind.INVOICE, RecordKind.VOUCHER
LISTING = "PurchaseOrderSet?"  # order listings only: a read by key carries no query string
WRONG_NAVIGATION = {"order": {"approvals": {"navigation": "NoSuchArray", "sequence": "SequenceNo",
                                            "approver": "AuthorizeId"}}}


def warnings(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


async def seen_keys(h) -> set[str]:
    return {r[0] for r in await h.db.fetchall("SELECT key FROM seen WHERE kind = 'order'")}


async def resolved_records(h) -> list[dict]:
    return [load_record(r[0]).to_dict() for r in await h.db.fetchall("SELECT record FROM events WHERE type = 'resolved'"
                                                          " ORDER BY id")]


def by_key(no: str) -> str:
    return f"PurchaseOrderSet(OrderNo='{no}')"


# ---------------------------------------------------------------- the simulator's listing faults


async def test_the_simulators_listing_faults_over_its_admin_api(ifs):
    for _ in range(5):
        ifs.add_order(company="10")
    url = "/main/ifsapplications/projection/v1/PurchaseOrderHandling.svc/PurchaseOrderSet"
    async with httpx.AsyncClient(base_url=ifs.base_url) as http:
        headers = await bearer(http)
        set_up = await http.post("/_sim/faults", json={"cap_top": 2, "endless_next_links": True, "path": LISTING})
        assert [f["action"] for f in set_up.json()["faults"]] == ["cap_top", "endless_next_links"]
        first = (await http.get(url, params={"$top": "4"}, headers=headers)).json()
        second = (await http.get(first["@odata.nextLink"], headers=headers)).json()
        assert (len(first["value"]), len(second["value"])) == (2, 2)
        assert first["@odata.nextLink"] != second["@odata.nextLink"] and "$skip=4" in unquote(second["@odata.nextLink"])
        one = await http.get(f"{url}(OrderNo='{ifs.rows('order')[0]['OrderNo']}')", headers=headers)
        assert "@odata.nextLink" not in one.json()  # a read by key is no listing

        await http.post("/_sim/faults", json={"clear": True, "empty_next": 1, "path": LISTING})
        assert (await http.get(url, params={"$top": "4"}, headers=headers)).json()["value"] == []
        again = (await http.get(url, params={"$top": "4"}, headers=headers)).json()
        assert len(again["value"]) == 4 and "@odata.nextLink" not in again


# ---------------------------------------------------------------- absence is not evidence


async def test_an_empty_listing_once_resolves_nothing_and_reposts_nothing(ifs, harness, caplog):
    for _ in range(14):
        ifs.add_order(company="10")
    h = await harness()
    assert (await h.poller.poll(ORDER, "10")).new == 14
    deliveries = await h.deliveries()
    caplog.set_level(logging.INFO, logger="pollers.engine")

    ifs.faults.empty_next(1, path=LISTING)
    glitch = await h.poller.poll(ORDER, "10")
    assert glitch.ok, glitch.error
    assert (glitch.rows, glitch.resolved, glitch.incomplete, glitch.deferred) == (0, 0, 14, 0)
    assert glitch.pending == 14 and len(await seen_keys(h)) == 14
    assert await h.events("resolved") == 0 and await h.deliveries() == deliveries
    lines = warnings(caplog, "looks incomplete")
    assert len(lines) == 1 and len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert "missed 14 records" in lines[0].getMessage() and "ifs.page_size" in lines[0].getMessage()
    assert (lines[0].source, lines[0].company) == ("order", "10")
    entries = [e for e in await AuditLog(h.db).recent(category="poll") if e.action == "listing order"]
    assert [(e.outcome, e.company, e.detail["missed"]) for e in entries] == [("incomplete", "10", 14)]
    assert await h.db.scalar("SELECT pending FROM sources WHERE kind = 'order'") == 14

    after = await h.poller.poll(ORDER, "10")
    assert (after.new, after.changed, after.resolved, after.incomplete) == (0, 0, 0, 0)
    assert await h.events() == 14 and await h.deliveries() == deliveries


async def test_an_empty_listing_of_many_records_says_it_once_and_defers_past_the_cap(ifs, harness, caplog):
    for _ in range(14):
        ifs.add_order(company="10")
    h = await harness(details_limit=0)
    h.poller.confirm_reads = 5
    await h.poller.poll(ORDER, "10")
    ifs.faults.empty_next(1, path=LISTING)
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    glitch = await h.poller.poll(ORDER, "10")
    assert (glitch.resolved, glitch.incomplete, glitch.deferred, glitch.pending) == (0, 5, 9, 14)
    [line] = caplog.records
    assert "missed 5 records" in line.getMessage() and "9 records missing from it were not confirmed" in (
        line.getMessage())
    after = await h.poller.poll(ORDER, "10")
    assert (after.new, after.resolved, after.incomplete, after.deferred) == (0, 0, 0, 0)


async def test_an_empty_listing_releases_no_quarantined_row(ifs, harness):
    ifs.add_invoice(company="10")
    bad = ifs.add_invoice(company="10")
    test_poller.corrupt(ifs, INVOICE, ("10", bad["InvoiceId"]), GrossCurrAmount="lots")
    h = await harness()
    assert (await h.poller.poll(INVOICE, "10")).bad == 1
    ifs.faults.empty_next(1, path="ManualSupplierInvoiceSet?")
    glitch = await h.poller.poll(INVOICE, "10")
    assert (glitch.incomplete, glitch.resolved) == (1, 0)
    assert await h.db.scalar("SELECT count(*) FROM quarantine") == 1
    again = await h.poller.poll(INVOICE, "10")
    assert again.bad == 1 and await h.db.scalar("SELECT count FROM quarantine") == 2  # the same row, seen again


async def test_a_record_approved_during_an_empty_listing_is_resolved_and_only_it(ifs, harness):
    orders = [ifs.add_order(company="10") for _ in range(3)]
    h = await harness()
    await h.poller.poll(ORDER, "10")
    ifs.approve("order", {"OrderNo": orders[0]["OrderNo"]}, by="MARIA")
    ifs.faults.empty_next(1, path=LISTING)
    glitch = await h.poller.poll(ORDER, "10")
    assert (glitch.resolved, glitch.incomplete) == (1, 2)
    [record] = await resolved_records(h)
    assert record["number"] == orders[0]["OrderNo"] and record["state"] == "Released"
    assert await seen_keys(h) == {f"OrderNo={o['OrderNo']}" for o in orders[1:]}
    after = await h.poller.poll(ORDER, "10")
    assert (after.new, after.changed, after.resolved) == (0, 0, 0)


async def test_a_deleted_record_is_resolved_as_last_seen(ifs, harness):
    gone, stays = ifs.add_order(company="10"), ifs.add_order(company="10")
    h = await harness()
    await h.poller.poll(ORDER, "10")
    ifs.remove("order", {"OrderNo": gone["OrderNo"]})
    result = await h.poller.poll(ORDER, "10")
    assert (result.resolved, result.incomplete, result.deferred) == (1, 0, 0)
    assert [r.status for r in ifs.data_requests(by_key(gone["OrderNo"]))][-1] == 404
    [record] = await resolved_records(h)
    assert (record["number"], record["state"]) == (gone["OrderNo"], "Planned")
    assert await seen_keys(h) == {f"OrderNo={stays['OrderNo']}"}


async def test_a_company_no_longer_granted_resolves_nothing(ifs, harness, caplog):
    for _ in range(14):
        ifs.add_order(company="10")
    ifs.add_order(company="20")
    h = await harness()
    await h.poller.poll(ORDER, "10")
    ifs.granted_companies = {"20"}  # IFS: empty listings and 404s by key for a company not granted
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    revoked = await h.poller.poll(ORDER, "10")
    assert revoked.ok and (revoked.resolved, revoked.incomplete, revoked.pending) == (0, 14, 14)
    [line] = warnings(caplog, "looks incomplete")
    assert "IFS shows no orders at all for company 10" in line.getMessage()
    assert "Allowed Companies" in line.getMessage()
    ifs.granted_companies = None
    back = await h.poller.poll(ORDER, "10")
    assert (back.new, back.changed, back.resolved) == (0, 0, 0) and await h.events() == 14


async def test_the_last_pending_record_deleted_is_resolved_when_the_company_is_visible(ifs, harness):
    approved, deleted = ifs.add_order(company="10"), ifs.add_order(company="10")
    h = await harness()
    await h.poller.poll(ORDER, "10")
    ifs.approve("order", {"OrderNo": approved["OrderNo"]})
    assert (await h.poller.poll(ORDER, "10")).resolved == 1
    ifs.remove("order", {"OrderNo": deleted["OrderNo"]})
    result = await h.poller.poll(ORDER, "10")  # an empty listing; the released order is still to be seen
    assert (result.rows, result.resolved, result.incomplete) == (0, 1, 0)
    assert [r["number"] for r in await resolved_records(h)] == [approved["OrderNo"], deleted["OrderNo"]]
    assert await seen_keys(h) == set()


@pytest.mark.parametrize("status", [500, 400])
async def test_a_failing_read_by_key_defers_the_record_to_the_next_poll(ifs, harness, caplog, status):
    approved, other = ifs.add_order(company="10"), ifs.add_order(company="10")
    h = await harness(retry_attempts=1)
    await h.poller.poll(ORDER, "10")
    ifs.approve("order", {"OrderNo": approved["OrderNo"]})
    # confirmations are read in batches; a batch IFS refuses (400) falls back to reads by key, which fail too
    ifs.faults.fail_next(1, status=status, path=f"$filter=OrderNo eq '{approved['OrderNo']}'")
    if status == 400:
        ifs.faults.fail_next(1, status=status, path=by_key(approved["OrderNo"]))
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    failed = await h.poller.poll(ORDER, "10")
    assert failed.ok, failed.error
    assert (failed.resolved, failed.deferred, failed.incomplete, failed.pending) == (0, 1, 0, 2)
    assert await h.events("resolved") == 0 and len(await seen_keys(h)) == 2
    lines = warnings(caplog, "not confirmed by key")
    assert len(lines) == 1 and (f"HTTP {status}" in lines[0].getMessage() or f"answered {status}" in lines[0].getMessage())

    again = await h.poller.poll(ORDER, "10")
    assert (again.resolved, again.deferred) == (1, 0)
    [record] = await resolved_records(h)
    assert (record["number"], record["state"]) == (approved["OrderNo"], "Released")
    assert await seen_keys(h) == {f"OrderNo={other['OrderNo']}"}


async def test_confirmations_have_their_own_budget_and_defer_the_rest(ifs, harness, caplog):
    orders = [ifs.add_order(company="10") for _ in range(5)]
    h = await harness(details_limit=0)  # no approval-chain reads at all: confirmations are not starved
    h.poller.confirm_reads = 3
    await h.poller.poll(ORDER, "10")
    for order in orders:
        ifs.approve("order", {"OrderNo": order["OrderNo"]})
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    first = await h.poller.poll(ORDER, "10")
    assert (first.resolved, first.deferred, first.pending) == (3, 2, 2)
    [line] = caplog.records
    assert "2 records missing from it were not confirmed by key (over ifs.confirm_reads_per_cycle = 3)" in (
        line.getMessage())
    assert sum(len(ifs.data_requests(by_key(o["OrderNo"]))) for o in orders) == 0  # read in one batch:
    [batch] = [r for r in ifs.data_requests("PurchaseOrderSet") if r.query.get("$filter", "").startswith("OrderNo eq")]
    assert batch.query["$filter"].count(" or ") == 2  # the three within the budget
    second = await h.poller.poll(ORDER, "10")
    assert (second.resolved, second.deferred, second.pending) == (2, 0, 0)
    records = await resolved_records(h)
    assert sorted(r["number"] for r in records) == sorted(o["OrderNo"] for o in orders)
    assert {r["state"] for r in records} == {"Released"}  # each one read by key, not guessed


async def test_a_server_capping_pages_silently_is_detected_on_a_first_poll(ifs, harness, caplog):
    for _ in range(60):
        ifs.add_order(company="10")
    ifs.faults.cap_top(50, path=LISTING)
    h = await harness(page_size=100, details_limit=0)
    caplog.set_level(logging.WARNING, logger="pollers.ifs_client")
    result = await h.poller.poll(ORDER, "10")
    assert result.ok and (result.new, result.pending) == (60, 60)
    assert [(r.query["$top"], r.query["$skip"]) for r in list_requests(ifs, "PurchaseOrderSet")] == [
        ("100", "0"), ("100", "50")]
    lines = warnings(caplog, "caps its pages at 50 rows")
    assert len(lines) == 1 and "set ifs.page_size to 50" in lines[0].getMessage()


async def test_a_short_listing_from_a_page_cap_resolves_nothing_and_says_so(ifs, harness, caplog):
    for _ in range(60):
        ifs.add_order(company="10")
    h = await harness(page_size=100, details_limit=0)
    assert (await h.poller.poll(ORDER, "10")).new == 60
    ifs.faults.cap_top(37, path=LISTING)  # not a round number: the listing just looks finished
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    short = await h.poller.poll(ORDER, "10")
    assert (short.rows, short.resolved, short.incomplete, short.pending) == (37, 0, 23, 60)
    [line] = warnings(caplog, "looks incomplete")
    assert "missed 23 records" in line.getMessage() and "ifs.page_size (100)" in line.getMessage()
    ifs.faults.clear()
    after = await h.poller.poll(ORDER, "10")
    assert (after.new, after.changed, after.resolved) == (0, 0, 0) and await h.events() == 60


async def test_a_page_cap_on_the_last_page_is_named_with_the_setting(ifs, harness, caplog):
    for _ in range(300):
        ifs.add_order(company="10")
    h = await harness(page_size=500, details_limit=0)
    assert (await h.poller.poll(ORDER, "10")).new == 300
    # capped at 256 from now on; the probe finds nothing past it when IFS also drops the rest for a moment
    ifs.faults.cap_top(256, path=LISTING)
    ifs.faults.empty_next(1, path="$skip=256")
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    short = await h.poller.poll(ORDER, "10")
    assert (short.resolved, short.incomplete) == (0, 44)
    [line] = warnings(caplog, "looks incomplete")
    assert "set ifs.page_size to 256" in line.getMessage()


# ---------------------------------------------------------------- listings that never end


def test_listing_and_confirmation_settings_are_validated():
    ifs = load_settings(env={}).ifs
    assert (ifs.confirm_reads_per_cycle, ifs.max_listing_pages, ifs.max_listing_seconds) == (500, 0, 900.0)
    tuned = load_settings(env={"NOTIFIER__IFS__MAX_LISTING_PAGES": "40", "NOTIFIER__IFS__MAX_LISTING_SECONDS": "60"})
    assert (tuned.ifs.max_listing_pages, tuned.ifs.max_listing_seconds) == (40, 60.0)
    for key, value in (("confirm_reads_per_cycle", "0"), ("max_listing_pages", "-1"), ("max_listing_seconds", "-5")):
        with pytest.raises(ConfigError, match=f"ifs.{key}"):
            load_settings(env={f"NOTIFIER__IFS__{key.upper()}": value})


def test_listing_bounds_are_derived_from_the_rows_expected():
    assert ListingBounds(expected_rows=14).pages_allowed(5000, 14) == 20
    assert ListingBounds(expected_rows=12_000).pages_allowed(5000, 5000) == 20
    assert ListingBounds(expected_rows=12_000).pages_allowed(5000, 1000) == 46  # the server pages by 1000
    assert ListingBounds(expected_rows=12_000, max_pages=7).pages_allowed(5000, 1000) == 7


async def test_an_endless_listing_fails_its_source_while_the_others_complete(ifs, service_factory, caplog):
    svc = await service_factory()
    async with svc.db.transaction() as conn:
        await Channels(svc.db).upsert(conn, ChannelRef(CHANNEL, "t", "team", "http://127.0.0.1:1/"))
        await Bindings(svc.db).put(conn, Binding(CHANNEL, "10"))
    ifs.add_order(company="10")
    ifs.add_invoice(company="10")
    ifs.add_voucher(company="10")
    ifs.faults.endless_next_links(path=LISTING)
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    # while a poll of the orders holds their lock, the other sources poll to the end: no lock is shared
    async with svc.jobs.locks[ORDER]:
        [invoice], [voucher] = await asyncio.wait_for(
            asyncio.gather(svc.poll_source(INVOICE), svc.poll_source(VOUCHER)), 60)
    assert (invoice.ok, invoice.new, voucher.ok, voucher.new) == (True, 1, True, 1)
    [order] = await svc.poll_source(ORDER)
    assert not order.ok and "listing of PurchaseOrderHandling.svc/PurchaseOrderSet stopped after 20 pages" in (
        order.error or "")
    # the listing's pages (the service's one-row check of odata.metadata=none filters on no state)
    assert len([r for r in list_requests(ifs, "PurchaseOrderSet") if "Objstate" in r.query.get("$filter", "")]) == 20
    [line] = [r for r in caplog.records if "stopped after" in r.getMessage()]
    assert "IFS kept sending next links" in line.getMessage() and line.source == "order"
    assert await svc.db.scalar("SELECT last_error FROM sources WHERE kind = 'order'") == order.error


async def test_a_configured_page_limit_is_named_in_the_error(ifs, harness):
    for _ in range(3):
        ifs.add_order(company="10")
    h = await harness()
    h.poller.max_listing_pages = 5
    ifs.faults.endless_next_links(path=LISTING)
    result = await h.poller.poll(ORDER, "10")
    assert not result.ok and "stopped after 5 pages (limit 5, ifs.max_listing_pages)" in (result.error or "")
    assert len(list_requests(ifs, "PurchaseOrderSet")) == 5
    assert result.new == 3  # the page read before it is kept; nothing was resolved from the listing
    ifs.faults.clear()
    again = await h.poller.poll(ORDER, "10")
    assert again.ok and (again.new, again.resolved) == (0, 0)


class TickingClock(FakeClock):
    """A clock that moves one second each time it is read: time passes as requests are made."""

    def monotonic(self) -> float:
        self.advance(1.0)
        return super().monotonic()


async def test_an_endless_listing_stops_at_its_time_limit_on_the_clients_clock(ifs):
    ifs.add_order(company="10")
    ifs.faults.endless_next_links(path=LISTING)
    client = IfsClient(IfsClientConfig(base_url=ifs.base_url, realm="ifs", client_id="notifier",
                                       client_secret="notifier-secret"), clock=TickingClock())
    pages = 0
    try:
        with pytest.raises(FatalRequestError, match=r"limit ifs.max_listing_seconds = 60\)"):
            async for _ in client.iter_pages("PurchaseOrderHandling", "PurchaseOrderSet", page_size=500,
                                             bounds=ListingBounds(max_pages=10_000, max_seconds=60)):
                pages += 1
    finally:
        await client.aclose()
    requests = len(list_requests(ifs, "PurchaseOrderSet"))
    assert pages == 1 and 2 <= requests < 60


# ---------------------------------------------------------------- approval lines that cannot be read


async def test_a_wrong_approval_navigation_degrades_the_cards_with_one_warning(ifs, harness, caplog):
    orders = [ifs.add_order(company="10") for _ in range(3)]
    h = await harness(sources=build_sources(WRONG_NAVIGATION))
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    result = await h.poller.poll(ORDER, "10")
    assert result.ok, result.error
    assert (result.new, result.deliveries) == (3, 3)
    records = [load_record(r[0]).to_dict() for r in await h.db.fetchall("SELECT record FROM events")]
    assert sorted(r["number"] for r in records) == sorted(o["OrderNo"] for o in orders)
    assert not any(r.get("approvers") for r in records)
    assert len(ifs.data_requests("NoSuchArray")) == 1  # no further approval-line reads in that poll
    [line] = warnings(caplog, "approval lines")
    assert len(caplog.records) == 1
    text = line.getMessage()
    assert "[sources.order] approvals.navigation" in text and "'NoSuchArray'" in text
    assert "Navigation property 'NoSuchArray' is not defined" in text and "answered 404" in text

    # a card in a channel (its lines re-read each poll), then one approved: still one warning a poll
    async with h.db.transaction() as conn:
        await Outbox(h.db).save_card(conn, f"order:10:OrderNo={orders[1]['OrderNo']}", "19:c@thread.tacv2",
                                     PostedCard("19:c@thread.tacv2;messageid=1", "1"))
    ifs.approve("order", {"OrderNo": orders[0]["OrderNo"]})
    caplog.clear()
    again = await h.poller.poll(ORDER, "10")
    assert again.ok and (again.changed, again.resolved) == (0, 1)
    assert len(warnings(caplog, "approval lines")) == 1 and len(ifs.data_requests("NoSuchArray")) == 2
    [record] = await resolved_records(h)
    assert (record["number"], record["state"]) == (orders[0]["OrderNo"], "Released")


async def test_approval_lines_of_a_record_gone_meanwhile_leave_the_other_chains_alone(ifs, harness, caplog):
    gone, kept = ifs.add_order(company="10"), ifs.add_order(company="10")
    h = await harness()
    # the first record vanishes between the listing and its approval lines (404 there, then 404 by key)
    ifs.faults.fail_next(1, status=404, code="ODP_RESOURCE_NOTFOUND", path=f"{by_key(gone['OrderNo'])}/")
    ifs.faults.fail_next(1, status=404, code="ODP_RESOURCE_NOTFOUND", path=by_key(gone["OrderNo"]))
    caplog.set_level(logging.WARNING, logger="pollers.engine")
    result = await h.poller.poll(ORDER, "10")
    assert result.ok and result.new == 2 and not caplog.records
    records = {r["number"]: r for r in (load_record(t[0]).to_dict() for t in await h.db.fetchall("SELECT record FROM events"))}
    assert not records[gone["OrderNo"]].get("approvers") and records[kept["OrderNo"]]["approvers"]


async def test_a_retriable_failure_of_the_approval_lines_still_fails_the_poll(ifs, harness):
    ifs.add_order(company="10")
    h = await harness(retry_attempts=1)
    ifs.faults.fail_next(1, status=503, path="PurchaseOrderApprovalArray")
    result = await h.poller.poll(ORDER, "10")
    assert not result.ok and "503" in (result.error or "")
    assert await h.events() == 0


async def test_cards_arrive_without_the_chain_when_the_navigation_is_wrong(ifs, connector, service_factory):
    order = ifs.add_order(company="10")
    svc = await service_factory(extra='[sources.order.approvals]\nnavigation = "NoSuchArray"\n'
                                      'sequence = "SequenceNo"\napprover = "AuthorizeId"\n')
    assert await post_activity(svc.base_url, channel_message("link company 10", connector.service_url)) in (200, 201)
    results = await svc.poll_source(ORDER)
    assert [r.ok for r in results] == [True]
    await svc.worker.run_once()
    cards = list(connector.cards(CHANNEL).values())
    assert len(cards) == 1 and order["OrderNo"] in json.dumps(cards[0])
