"""Fresh and light on IFS: one listing per kind for every linked company, lean listings with whole rows read
by key only where something changed, confirmations in batches, and the cost of a cycle counted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import replace

from core.domain import FinanceRecord, RecordKind
from core.settings import load_settings
from pollers.engine import Poller, PollResult, _Budget, _chunks, _Cycle, _Part
from pollers.ifs_client import bounded_groups
from pollers.mapping import etag_version
from pollers.sources import DEFAULT_SOURCES
from tests import test_poller
from tests.test_poller import list_requests

harness = test_poller.harness  # a poller on a SQLite file and the simulator

ORDER = RecordKind.ORDER
COMPANIES = ("10", "20", "30")


def listings(ifs) -> list:
    return [r for r in list_requests(ifs, "PurchaseOrderSet") if "Objstate" in r.query.get("$filter", "")]


async def test_one_listing_serves_every_linked_company(ifs, harness):
    for company, n in zip(COMPANIES, (3, 2, 1), strict=True):
        for _ in range(n):
            ifs.add_order(company=company)
    h = await harness(companies=COMPANIES)
    results = await h.poller.poll_many(ORDER, COMPANIES)
    assert [(r.company, r.ok, r.new, r.pending) for r in results] == [("10", True, 3, 3), ("20", True, 2, 2),
                                                                       ("30", True, 1, 1)]
    [listing] = listings(ifs)
    assert listing.query["$filter"].startswith("(Company eq '10' or Company eq '20' or Company eq '30') and Objstate")
    seen = await h.db.fetchall("SELECT company, count(*) FROM seen GROUP BY company ORDER BY company")
    assert [tuple(r) for r in seen] == [("10", 3), ("20", 2), ("30", 1)]
    # what the cycle asked of IFS is counted, the shared listing shared out
    assert sum(r.requests for r in results) == len(ifs.requests)
    assert all(r.bytes > 0 for r in results)


def test_companies_are_chunked_so_that_a_listing_url_stays_short():
    spec = DEFAULT_SOURCES[ORDER]
    parts = [_Part(f"C{i:04d}", PollResult(ORDER, f"C{i:04d}"), _Cycle(ORDER, f"C{i:04d}", _Budget(0)))
             for i in range(400)]
    chunks = _chunks(spec, parts, 3000)
    assert [p.company for chunk in chunks for p in chunk] == [p.company for p in parts]  # all, in order, once
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(" or ".join(spec.company_condition(p.company) for p in chunk)) <= 3000
        assert 3000 - len(" or ".join(spec.company_condition(p.company) for p in chunk)) < 30 or chunk is chunks[-1]
    assert spec.filter_for_companies(["10"]) == spec.filter_for("10")


def test_groups_fill_up_to_the_limit_joiners_counted_between_items_only():
    words = ["aaaa", "bb", "cccccccccc", "d", "ee"]
    groups = bounded_groups(words, map(len, words), 2, 8)
    assert groups == [["aaaa", "bb"], ["cccccccccc"], ["d", "ee"]]  # 4+2+2 = 8 fits; an item over the limit alone
    assert bounded_groups([], [], 2, 8) == []
    assert bounded_groups(words, map(len, words), 0, 1000) == [words]


async def test_an_unchanged_cycle_is_one_lean_listing(ifs, harness):
    for company in COMPANIES:
        for _ in range(4):
            ifs.add_order(company=company)
    h = await harness(companies=COMPANIES, details_limit=0)
    await h.poller.poll_many(ORDER, COMPANIES)
    first = listings(ifs)[-1]
    ifs.requests.clear()
    results = await h.poller.poll_many(ORDER, COMPANIES)
    assert [(r.new, r.changed, r.resolved) for r in results] == [(0, 0, 0)] * 3
    assert len(ifs.requests) == 1  # the listing, and nothing else
    [listing] = listings(ifs)
    assert listing.query["$select"].split(",") == list(DEFAULT_SOURCES[ORDER].lean_select)
    assert len(first.query["$select"].split(",")) > len(DEFAULT_SOURCES[ORDER].lean_select)  # a first poll reads whole


async def events_of(h) -> list[tuple[str, dict]]:
    rows = await h.db.fetchall("SELECT type, record FROM events ORDER BY id")
    out = []
    for kind, record in rows:
        data = json.loads(record)
        out.append((kind, data if isinstance(data, dict) else list(data)))
    return out


def _mixed_changes(ifs, orders):
    """Two amended orders, one approved (leaves the pending set) and two new ones; returns the new ones."""
    ifs.update("order", {"OrderNo": orders[0]["OrderNo"]}, GrossAmtCurr=99.5, VendorName="Renamed AB")
    ifs.update("order", {"OrderNo": orders[1]["OrderNo"]}, CurrencyCode="NOK")
    ifs.approve("order", {"OrderNo": orders[2]["OrderNo"]})
    return [ifs.add_order(company="10") for _ in range(2)]


async def test_lean_listing_and_reads_by_key_give_the_records_full_rows_give(ifs, harness):
    orders = [ifs.add_order(company="10") for _ in range(6)]
    lean, full = await harness(details_limit=0), await harness(details_limit=0)
    full.poller.lean_listing = False
    for h in (lean, full):
        await h.poller.poll(ORDER, "10")
    added = _mixed_changes(ifs, orders)
    ifs.requests.clear()
    got = await lean.poller.poll(ORDER, "10")
    assert (got.new, got.changed, got.resolved) == (2, 2, 1)
    # the new and changed records were read whole in one batch, and the approved one confirmed in another
    batches = [r.query["$filter"] for r in list_requests(ifs, "PurchaseOrderSet") if "Objstate" not in
               r.query.get("$filter", "Objstate")]
    assert sorted(f.count("OrderNo eq") for f in batches) == [1, 4]
    assert {o["OrderNo"] for o in (*orders[:2], *added)} == {
        no for f in batches for no in f.replace("OrderNo eq ", "").replace("'", "").split(" or ")} - {
        orders[2]["OrderNo"]}
    await full.poller.poll(ORDER, "10")
    assert await events_of(lean) == await events_of(full)


def test_the_default_poll_interval_is_two_minutes():
    assert load_settings(None, env={}).schedule.every_minutes == 2


async def test_status_and_metrics_show_the_cost_of_polling_and_the_lag_to_the_card(ifs, connector, service_factory):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_bot_commands import say

    svc = await service_factory()
    ifs.add_order(company="10")
    await say(svc, connector, "link company 10")
    await svc.poll_source(ORDER)
    await svc.worker.run_once()
    async with httpx.AsyncClient(base_url=svc.base_url) as client:
        text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["notifier_poll_cycle_seconds"].type == "histogram"
    assert families["notifier_record_to_card_seconds"].type == "histogram"
    count = [s.value for s in families["notifier_record_to_card_seconds"].samples if s.name.endswith("_count")]
    assert count == [1.0]
    requests = [s for s in families["notifier_poll_ifs_requests"].samples if s.labels.get("source") == "order"]
    assert requests and requests[0].value >= 1
    assert [s.value for s in families["notifier_ifs_bytes"].samples][0] > 0
    said = await say(svc, connector, "status")
    [load] = [line for line in said.lines if line.startswith("Load on IFS: ")]
    assert load.startswith("Load on IFS: last hour: ") and " in 1 cycles; per cycle " in load
    assert "long URLs" not in load
    svc.jobs.ifs.filter_chars = 700  # as after IFS refused a long URL (the 414 tests below)
    said = await say(svc, connector, "status")
    [load] = [line for line in said.lines if line.startswith("Load on IFS: ")]
    assert load.endswith("; IFS refuses long URLs, so filters are kept under 700 characters")


async def test_approval_reads_are_budgeted_per_cycle_not_per_company(ifs, harness):
    for company in COMPANIES:
        for _ in range(30):
            ifs.add_order(company=company)
    h = await harness(companies=COMPANIES, details_limit=50)
    results = await h.poller.poll_many(ORDER, COMPANIES)
    assert sum(r.new for r in results) == 90
    assert len(ifs.data_requests("PurchaseOrderApprovalArray")) == 50  # not 50 for each of the companies


async def test_a_source_with_no_company_linked_asks_nothing_and_writes_nothing(ifs, service_factory):
    svc = await service_factory()
    audit_rows = await svc.audit.count("poll")
    assert await svc.poll_source(ORDER) == []
    assert ifs.data_requests() == [] and await svc.audit.count("poll") == audit_rows


BY_ETAG = DEFAULT_SOURCES[ORDER]
BY_VERSION = dataclasses.replace(BY_ETAG, row_versions=True)  # as TenantSchema leaves it for a tenant that allows it
MARKER = FinanceRecord.COMPACT.index("etag")


def markers(events: list[tuple[str, object]]) -> list[str]:
    return [r["etag"] if isinstance(r, dict) else r[MARKER] for _, r in events]


def without_markers(events: list[tuple[str, object]]) -> list[tuple[str, object]]:
    out = []
    for kind, record in events:
        if isinstance(record, dict):
            record = {k: v for k, v in record.items() if k != "etag"}
        else:
            record = [v for i, v in enumerate(record) if i != MARKER]
        out.append((kind, record))
    return out


async def test_listing_by_row_version_gives_the_events_etags_give_for_fewer_bytes(ifs, harness):
    orders = [ifs.add_order(company="10") for _ in range(6)]
    by_version, by_etag = await harness(details_limit=3), await harness(details_limit=3)
    by_version.poller.set_source(BY_VERSION)
    for h in (by_version, by_etag):
        await h.poller.poll(ORDER, "10")
    added = _mixed_changes(ifs, orders)
    got = {}
    for name, h in (("version", by_version), ("etag", by_etag)):
        ifs.requests.clear()
        got[name] = await h.poller.poll(ORDER, "10")
        assert len(listings(ifs)) == 1
        listing = listings(ifs)[0]
        assert ("Objversion" in listing.query["$select"].split(",")) == (name == "version")
    assert [(r.new, r.changed, r.resolved) for r in got.values()] == [(2, 2, 1)] * 2
    for h in (by_version, by_etag):  # and an unchanged cycle
        assert ((r := await h.poller.poll(ORDER, "10")).new, r.changed, r.resolved) == (0, 0, 0)
    # the same events, cards and approval chains; only the change marker differs, and it names the same version
    versions, etags = await events_of(by_version), await events_of(by_etag)
    assert without_markers(versions) == without_markers(etags)
    assert [m.removeprefix("v:") for m in markers(versions)] == [etag_version(m) for m in markers(etags)]
    assert all(m.startswith("v:") for m in markers(versions)) and len(versions) == 6 + 2 + 2 + 1
    assert all(any(o["OrderNo"] in json.dumps(r) for t, r in versions[-5:] if t == "new") for o in added)


async def test_an_unchanged_listing_by_row_version_carries_no_etags(ifs, harness):
    for _ in range(20):
        ifs.add_order(company="10")
    cost = {}
    for spec in (BY_VERSION, BY_ETAG):
        h = await harness(details_limit=0)
        h.poller.set_source(spec)
        await h.poller.poll(ORDER, "10")
        ifs.requests.clear()
        cost[spec.row_versions] = (await h.poller.poll(ORDER, "10")).bytes
        assert len(ifs.requests) == 1
    # an etag is ~77 bytes of a row, Objversion ~30: about 45 bytes a row less, and no @odata.context
    assert cost[True] < cost[False] - 20 * 40


async def test_a_change_of_marker_kind_makes_nothing_look_changed_or_resolved(ifs, harness):
    orders = [ifs.add_order(company="10") for _ in range(6)]
    h = await harness(details_limit=0)
    await h.poller.poll(ORDER, "10")  # seen with etags
    h.poller.set_source(BY_VERSION)
    ifs.update("order", {"OrderNo": orders[0]["OrderNo"]}, GrossAmtCurr=1.5)  # real changes meanwhile
    ifs.approve("order", {"OrderNo": orders[1]["OrderNo"]})
    r = await h.poller.poll(ORDER, "10")
    assert (r.new, r.changed, r.resolved, r.pending) == (0, 1, 1, 5)
    ifs.requests.clear()
    r = await h.poller.poll(ORDER, "10")
    assert (r.new, r.changed, r.resolved, len(ifs.requests)) == (0, 0, 0, 1)  # the listing alone
    stored = dict(tuple(row) for row in await h.db.fetchall("SELECT key, etag FROM seen"))
    changed = f"OrderNo={orders[0]['OrderNo']}"
    assert stored[changed].startswith("v:")  # written when it changed; the others keep their etags till they do
    assert all(m.startswith('W/"') for k, m in stored.items() if k != changed)
    # a poller started afresh on the same database (nothing in memory) sees nothing changed either
    fresh = Poller(client=h.client, sources={ORDER: BY_VERSION}, seen=h.poller.seen, bindings=h.poller.bindings,
                   writer=h.poller.writer, audit=h.poller.audit, ifs_base_url=ifs.base_url, details_limit=0)
    ifs.update("order", {"OrderNo": orders[2]["OrderNo"]}, CurrencyCode="NOK")  # an etag-only change is seen
    r = await fresh.poll(ORDER, "10")
    assert (r.new, r.changed, r.resolved) == (0, 1, 0)
    # and back to etags (a tenant no longer honouring odata.metadata=none)
    fresh.set_source(BY_ETAG)
    r = await fresh.poll(ORDER, "10")
    assert (r.new, r.changed, r.resolved) == (0, 0, 0)
    ifs.update("order", {"OrderNo": orders[0]["OrderNo"]}, GrossAmtCurr=2.5)
    r = await fresh.poll(ORDER, "10")
    assert (r.new, r.changed, r.resolved) == (0, 1, 0)
    assert [t for t, _ in await events_of(h)] == ["new"] * 6 + ["changed", "resolved", "changed", "changed"]


RECORDED_ETAG = 'W/"Vy8iQUFDSU1HQUFGQUFCcElIQUFBOjIwMTkxMDMxMTMyNDAwIg=="'  # a live IFS answer (ifs-cloud-api.md)


def test_the_version_inside_an_ifs_etag_is_read_as_recorded_and_anything_else_carries_none():
    from pollers.mapping import marker_version, version_marker

    assert etag_version(RECORDED_ETAG) == "20191031132400"
    assert marker_version(RECORDED_ETAG) == marker_version("v:20191031132400") == "20191031132400"
    assert version_marker(11) == "v:11" and version_marker("20191031132400") == "v:20191031132400"
    assert version_marker("") is None and version_marker(True) is None and version_marker(None) is None
    for opaque in ('W/"Vy8iMTIi"', '"not base64!"', 'W/"MTIz"', "", 'W/"' + "QUJD" + '"'):
        assert etag_version(opaque) is None, opaque


def test_the_simulators_etags_have_the_recorded_shape_and_length(ifs):
    from simulator.ifs import decode_etag

    row = ifs.add_order(company="10")
    etag = row["@odata.etag"]
    assert len(etag) == len(RECORDED_ETAG) and etag.startswith('W/"Vy8i') and etag.endswith('Ig=="')
    objid, version = decode_etag(etag)
    assert (len(objid), version) == (len("AACIMGAAFAABpIHAAA"), row["Objversion"]) and len(version) == 14
    assert etag_version(etag) == row["Objversion"]


async def test_a_tenant_refusing_long_urls_gets_the_same_records_in_smaller_listings(ifs, harness):
    """A proxy in front of IFS answers 414 to URLs over 1,500 characters: the listing for 60 companies is split
    once and for good (one 414 in all), every company's records arrive once, and the batched reads by key of a
    later cycle are kept as short."""
    ifs.profile = replace(ifs.profile, max_url=1500)
    companies = [f"COMPANY-{i:03d}" for i in range(60)]
    orders = [ifs.add_order(company=company) for company in companies for _ in range(2)]
    h = await harness(companies=companies, details_limit=0)

    results = await h.poller.poll_many(ORDER, companies)

    assert [(r.ok, r.new) for r in results] == [(True, 2)] * 60
    refused = [r for r in ifs.requests if r.status == 414]
    assert 1 <= len(refused) <= 2 and h.client.filter_chars < 1500
    ifs.requests.clear()
    for order in orders[::2]:  # a changed record per company: 60 reads by key, batched
        ifs.update("order", {"OrderNo": order["OrderNo"]}, BuyerCode="CHANGED")
    results = await h.poller.poll_many(ORDER, companies)
    assert [r.changed for r in results] == [1] * 60 and all(r.ok for r in results)
    assert all(r.status == 200 for r in ifs.requests) and len(ifs.requests) > 2


async def test_after_a_414_the_listings_not_yet_asked_are_shortened_too(ifs, harness):
    ifs.profile = replace(ifs.profile, max_url=1500)
    companies = [f"COMPANY-{i:03d}" for i in range(300)]  # several listings of about 3 KB of filter each
    for company in companies:
        ifs.add_order(company=company)
    h = await harness(companies=companies, details_limit=0)

    results = await h.poller.poll_many(ORDER, companies)

    assert all(r.ok for r in results) and sum(r.new for r in results) == 300
    assert 1 <= len([r for r in ifs.requests if r.status == 414]) <= 2  # not one per listing planned before


async def test_reads_by_key_split_when_ifs_refuses_the_url_and_keep_every_row_once(ifs, harness):
    ifs.profile = replace(ifs.profile, max_url=1200)
    keys = [ifs.add_order(company="10")["OrderNo"] for _ in range(80)]
    h = await harness()
    spec = DEFAULT_SOURCES[ORDER]

    rows = await h.client.read_by_keys(spec.projection, spec.entity_set,
                                       [{"OrderNo": k} for k in keys], select=["OrderNo"])

    assert sorted(r["OrderNo"] for r in rows) == sorted(keys)
    refused = [r.status for r in ifs.requests if r.status != 200]
    assert refused in ([414], [414, 414])  # halved until it fits (the URL is longer than its filter: encoding)
    ifs.requests.clear()
    again = await h.client.read_by_keys(spec.projection, spec.entity_set, [{"OrderNo": k} for k in keys],
                                        select=["OrderNo"])
    assert len(again) == 80 and {r.status for r in ifs.requests} == {200}  # learned: no 414 any more


async def test_a_url_limit_that_splitting_cannot_meet_fails_the_listing_once_instead_of_asking_forever(ifs, harness):
    ifs.profile = replace(ifs.profile, max_url=200)  # shorter than any listing's URL, one company's too
    companies = [f"C{i}" for i in range(12)]  # their conditions together just under the 250-character floor
    for company in companies:
        ifs.add_order(company=company)
    h = await harness(companies=companies, details_limit=0)

    results = await asyncio.wait_for(h.poller.poll_many(ORDER, companies), 30)

    assert [r.ok for r in results] == [False] * 12 and "414" in (results[0].error or "")
    assert len([r for r in ifs.requests if r.status == 414]) == 1  # asked once: splitting would not help


async def test_a_414_on_a_later_page_fails_that_listing_and_shortens_the_next_cycles(ifs, harness):
    """The first window's URL passes the proxy, a later one ($skip=10, a character longer) does not: the pages
    already written stand, this cycle's listing fails, and the next cycle's listings are short enough."""
    from pollers.ifs_client import _query

    companies = [f"COMPANY-{i:03d}" for i in range(30)]
    for company in companies:
        ifs.add_order(company=company)
    probe = await harness(companies=companies, details_limit=0, page_size=2)
    await probe.poller.poll_many(ORDER, companies)
    first = next(r for r in ifs.requests if r.query.get("$skip") == "0" and "$filter" in r.query)
    ifs.profile = replace(ifs.profile, max_url=len(first.path) + 1 + len(_query(first.query)))  # $skip=10: +1
    h = await harness(companies=companies, details_limit=0, page_size=2)

    failed = await h.poller.poll_many(ORDER, companies)
    assert not any(r.ok for r in failed) and h.client.filter_chars < 3000
    ifs.requests.clear()
    again = await h.poller.poll_many(ORDER, companies)
    assert all(r.ok for r in again) and sum(r.new for r in again) + sum(r.new for r in failed) == 30
    assert {r.status for r in ifs.requests} == {200}
