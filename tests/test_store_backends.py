"""Every repository's behaviour, on both back ends (the `db` fixture runs each test on SQLite, then on
PostgreSQL), and what only the PostgreSQL back end has: the rendered schema, replicas claiming side by
side, migrations raced, passwords kept out of messages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from decimal import Decimal

import httpx
import pytest

from bench.common import service_from, write_config
from core.clock import FakeClock
from core.domain import ApprovalStep, Binding, ChannelRef, EventType, FinanceRecord, PostedCard, RecordKind
from core.errors import ConfigError
from core.people import Person, PersonStatus
from core.settings import load_settings
from simulator.postgres import NOT_INSTALLED, PostgresServer, find_binaries
from store.db import DB_ERRORS, open_database
from store.migrations import MIGRATIONS, statements, to_postgresql
from store.outbox import DeliveryStatus
from store.pg import PgDatabase, open_pg, pg_dump_command, redact, translate
from store.poll_writer import Finished, PollWriter
from store.unit import Store
from store.vault import KeyRing, Vault

T0 = 1_780_000_000.25  # a unix time with a fraction: a float4 column would lose it
CH, CH2 = "19:alpha@thread.tacv2", "19:beta@thread.tacv2"
INV = RecordKind.INVOICE


def ref(channel_id: str, *, team: str = "team-1", name: str | None = None) -> ChannelRef:
    return ChannelRef(channel_id, "tenant", team, "https://smba.example/", reference={"conversation": {"id": channel_id}},
                      name=name)


def rec(i: int, *, state: str = "AwaitingApproval", etag: str | None = None, company: str = "10",
        cost_center: str | None = None, amount: str | None = None, approver: str | None = None) -> FinanceRecord:
    return FinanceRecord(INV, company, f"Company={company}^InvoiceId={i}", str(i), state, etag or f"W/{i}",
                         cost_center=cost_center, amount=None if amount is None else Decimal(amount),
                         approval_step="step 1" if approver else None,
                         approvers=(ApprovalStep(1, approver, "Unacknowledged"),) if approver else ())


def change(r: FinanceRecord, etype: EventType = EventType.NEW, prev: str | None = None):
    return (etype, r.to_dict(), prev, r.approval_step or "")


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def store(db, clock):
    return Store(db, clock)


async def linked(store: Store, *channels: str, company: str = "10", **narrow) -> None:
    async with store.unit() as u:
        for c in channels:
            await u.channels.upsert(ref(c))
            await u.bindings.put(Binding(c, company, **narrow))


# ------------------------------------------------------------------ audit


async def test_audit_rows_are_written_read_counted_and_pruned(store, clock):
    first = await store.audit.record("poll", "poll invoices", "ok", company="10", found=3)
    second = await store.audit.record("delivery", "post", "retry", channel_id=CH, delivery_id=7, status=429)
    assert second > first
    async with store.unit() as u:
        await u.audit.add("delivery", "post", "failed", channel_id=CH2, code="Forbidden")
    await store.audit.set_detail(first, found=5)
    assert await store.audit.count("poll") == 1 and await store.audit.count("delivery", "post") == 2
    assert await store.audit.detail_total("poll", "found") == 5
    problem = await store.audit.last_delivery_problem()
    assert (problem.channel_id, problem.outcome, problem.detail) == (CH2, "failed", {"code": "Forbidden"})
    assert (await store.audit.last_delivery_problem(CH)).delivery_id == 7
    assert [e.action for e in await store.audit.recent(channel_id=CH)] == ["post"]
    assert [e.outcome for e in await store.audit.recent(failed_only=True)] == ["failed", "retry"]
    [entry] = await store.audit.recent(category="poll")
    assert (entry.at, entry.company, entry.detail) == (T0, "10", {"found": 5})
    clock.advance(3 * 86400)
    await store.audit.record("system", "started", "ok")
    assert await store.audit.prune(2) == 3
    assert [e.action for e in await store.audit.recent()] == ["started"]


# ------------------------------------------------------------------ channels and bindings


async def test_channels_are_upserted_and_their_switches_kept(store):
    async with store.unit() as u:
        assert await u.channels.upsert(ref(CH, name="Finance"))
        assert not await u.channels.upsert(ChannelRef(CH, None, None, "https://smba2.example/"))  # known, active
        assert await u.channels.upsert(ref(CH2, team="team-2"))
    got = await store.channels.get(CH)
    # a refresh without tenant, team or name keeps those it had
    assert (got.tenant_id, got.team_id, got.name, got.service_url) == ("tenant", "team-1", "Finance",
                                                                      "https://smba2.example/")
    async with store.unit() as u:
        assert await u.channels.set_active(CH, False, "removed")
        assert not await u.channels.set_active(CH, False, "removed")  # already so: nothing changed
        await u.channels.set_quiet_hours(CH2, "22:00-06:00")
        await u.channels.set_paused(CH2, True)
        await u.channels.rename(CH2, "AP")
    assert [(c.channel_id, c.active, c.inactive_reason) for c in await store.channels.all()] == [
        (CH, False, "removed"), (CH2, True, None)]
    beta = await store.channels.get(CH2)
    assert (beta.quiet_hours, beta.paused, beta.name) == ("22:00-06:00", True, "AP")
    async with store.unit() as u:
        assert await u.channels.set_active_for_team("team-1", True, None, only_reasons=["uninstalled"]) == []
        assert await u.channels.set_active_for_team("team-1", True, None, only_reasons=["removed"]) == [CH]
        assert await u.channels.upsert(ref("19:gamma")) is True
    assert await store.channels.get("19:nope") is None


async def test_bindings_are_put_replaced_listed_and_removed(store):
    await linked(store, CH, CH2)
    async with store.unit() as u:
        assert not await u.bindings.put(Binding(CH, "10", kinds=frozenset({INV}), cost_centers=frozenset({"B", "A"}),
                                                min_amount=Decimal("100.50"), created_by="ann"))
        assert await u.bindings.put(Binding(CH, "20"))
        await u.channels.set_active(CH2, False, "removed")
    [b10, b20] = await store.bindings.for_channel(CH)
    assert (b10.kinds, b10.cost_centers, b10.min_amount, b10.created_by) == (frozenset({INV}), frozenset({"A", "B"}),
                                                                             Decimal("100.50"), "ann")
    assert b20.kinds == frozenset(RecordKind)
    assert [(b.channel_id, b.company) for b in await store.bindings.all()] == [(CH, "10"), (CH, "20"), (CH2, "10")]
    assert [b.channel_id for b in await store.bindings.all(active_only=True)] == [CH, CH]
    assert await store.bindings.companies() == ["10", "20"]
    async with store.unit() as u:
        assert await u.bindings.remove(CH, "20") == 1
        assert await u.bindings.remove(CH2, None) == 1
    assert [(b.channel_id, b.company) for b in await store.bindings.all()] == [(CH, "10")]


# ------------------------------------------------------------------ the poll writer and what was seen


async def test_a_page_writes_events_seen_rows_and_deliveries_for_whole_and_narrowed_bindings(store, db, clock):
    await linked(store, CH)
    await linked(store, CH2, cost_centers=frozenset({"CC1"}))
    narrowed = Binding(CH2, "10", cost_centers=frozenset({"CC1"}))
    writer = PollWriter(db, clock)
    records = [rec(i, cost_center="CC1" if i % 2 else "CC2") for i in range(10)]
    made = await writer.apply(INV, "10", [change(r) for r in records], [Binding(CH, "10"), narrowed])
    assert made == 10 + 5
    assert await store.row_counts() == {"events": 10, "deliveries": 15, "seen": 10}
    assert await store.seen.known_by_company(INV, ["10", "20"]) == {"10": 10}
    # the same page again is nothing new; a changed etag, a state move and a new record are
    def page(rows):
        return [("10", [r.key for r in rows], [r.etag for r in rows], [r.state for r in rows], ["" for _ in rows])]

    assert await store.seen.compare_many(INV, page(records)) == [{}]
    later = [*records[:3], rec(3, etag="W/3b"), rec(4, state="Authorized"), *records[5:], rec(99)]
    assert await store.seen.compare_many(INV, page(later)) == [{records[3].key: "AwaitingApproval",
                                                               records[4].key: "AwaitingApproval",
                                                               "Company=10^InvoiceId=99": None}]
    # resolved records leave the seen rows; their events and deliveries stay
    clock.advance(60)
    gone = [change(records[0], EventType.RESOLVED, "AwaitingApproval")]
    moved = [change(rec(1, state="Authorized", etag="W/1b", cost_center="CC1"), EventType.CHANGED, "AwaitingApproval")]
    assert await writer.apply(INV, "10", gone + moved, [Binding(CH, "10"), narrowed]) == 2 + 1
    assert await store.row_counts() == {"events": 12, "deliveries": 18, "seen": 9}
    assert [k for k, _, _ in await store.seen.left(INV, "10", [r.key for r in records[2:]])] == [records[1].key]
    [(key, state, event_id)] = await store.seen.left(INV, "10", [r.key for r in records[2:]])
    assert state == "Authorized" and (await store.seen.last_record(event_id)).etag == "W/1b"
    pending = await store.seen.pending_records("10")
    assert sorted(r.number for _, r in pending) == [str(i) for i in range(1, 10)]


async def test_a_page_quarantines_bad_rows_and_finishing_records_the_source(store, db, clock):
    writer = PollWriter(db, clock)
    bad = [("Company=10^InvoiceId=7", "GrossAmount", "not a number"), ("Company=10^InvoiceId=8", "Currency", "empty")]
    assert await writer.apply(INV, "10", [], [], bad_rows=bad, audit=store.audit) == 0
    await writer.apply(INV, "10", [], [], bad_rows=bad[:1], audit=store.audit)
    assert await store.seen.quarantined_by_company(INV, ["10", "11"]) == {"10": {"Company=10^InvoiceId=7",
                                                                                 "Company=10^InvoiceId=8"}}
    assert await store.seen.quarantine_counts() == {("invoice", "10"): 2}
    assert await store.audit.count("record", "quarantine") == 3
    await writer.finish_many(INV, [Finished("10", True, 4, None, {"found": 4}, unquarantine=["Company=10^InvoiceId=8"]),
                                   Finished("20", False, None, "HTTP 500", {})], store.audit)
    states = {(s.company, s.available, s.pending, s.last_error) for s in await store.seen.source_states()}
    assert states == {("10", True, 4, None), ("20", False, 0, "HTTP 500")}
    assert await store.seen.quarantine_counts() == {("invoice", "10"): 1}
    [poll_20, poll_10] = await store.audit.recent(category="poll")
    assert (poll_10.detail, poll_20.outcome) == ({"found": 4, "released": 1}, "failed")
    # a later failure keeps the last good time and the pending count
    clock.advance(60)
    await writer.finish_many(INV, [Finished("10", False, None, "timeout", {})], store.audit)
    [s10] = [s for s in await store.seen.source_states() if s.company == "10"]
    assert (s10.last_ok, s10.last_run, s10.pending, s10.available) == (T0, T0 + 60, 4, False)
    assert await writer.ifs_available()
    await writer.set_ifs_available(False, "connection refused", store.audit)
    assert not await writer.ifs_available()


async def test_approval_chains_are_kept_and_cards_found_by_record_prefix(store, db, clock):
    writer = PollWriter(db, clock)
    records = [rec(i, approver="ALAIN") for i in range(3)]
    await writer.apply(INV, "10", [change(r) for r in records], [])
    async with store.unit() as u:
        await u.channels.upsert(ref(CH))
        await u.outbox.save_card(records[0].record_id, CH, PostedCard(f"{CH};messageid=1", "1"))
        await u.outbox.save_card("invoice:100:Company=100^InvoiceId=0", CH, PostedCard(f"{CH};messageid=2", "2"))
    [row] = await store.seen.with_cards(INV, "10")
    assert (row.key, row.step, row.chain, row.chain_checked) == (records[0].key, "step 1", "step 1", T0)
    await store.seen.mark_chains_checked(INV, "10", [records[0].key], T0 + 100)
    # a later page without a chain keeps the one known and the later check time
    await writer.apply(INV, "10", [change(rec(0, etag="W/0b"), EventType.CHANGED, "AwaitingApproval")], [])
    [row] = await store.seen.with_cards(INV, "10")
    assert (row.chain, row.chain_checked, row.step) == ("step 1", T0 + 100, "")


# ------------------------------------------------------------------ the outbox


async def test_a_delivery_sent_stays_sent_whatever_a_late_settle_of_another_replica_says(store, db, clock):
    await linked(store, CH)
    await PollWriter(db, clock).apply(INV, "10", [change(rec(0))], [Binding(CH, "10")])
    [d] = await store.outbox.claim(CH, lease=30, digest_threshold=10)
    async with store.unit() as u:
        await u.outbox.settle([d.id], DeliveryStatus.SENT, http_status=201)  # the replica that took the channel over
    async with store.unit() as u:  # the one that lost the channel's lease hands its claim back, too late
        await u.outbox.settle([d.id], DeliveryStatus.PENDING, error="channel lease lost")
        await u.outbox.settle([d.id], DeliveryStatus.FAILED, http_status=403)
    assert await store.outbox.counts(CH) == {"sent": 1}


async def test_claims_take_the_oldest_supersede_older_news_and_settle(store, db, clock):
    await linked(store, CH)
    writer = PollWriter(db, clock)
    await writer.apply(INV, "10", [change(rec(i)) for i in range(3)], [Binding(CH, "10")])
    await writer.apply(INV, "10", [change(rec(0, etag="W/0b"), EventType.CHANGED, "AwaitingApproval")],
                       [Binding(CH, "10")])
    assert await store.outbox.due_channels() == [CH]
    assert await store.outbox.next_due_at() == T0
    [first] = await store.outbox.claim(CH, lease=30, digest_threshold=10)
    assert (first.record.number, first.event_type, first.attempts, first.status) == ("1", EventType.NEW, 1, "sending")
    assert await store.outbox.counts(CH) == {"pending": 2, "sending": 1, "superseded": 1}
    async with store.unit() as u:
        await u.outbox.settle([first.id], DeliveryStatus.SENT, http_status=201)
        await u.outbox.save_card(first.record_id, CH, PostedCard(f"{CH};messageid=9", "9"))
    assert await store.outbox.card_for(first.record_id, CH) == PostedCard(f"{CH};messageid=9", "9")
    assert await store.outbox.cards_in(CH) == [(first.record_id, "9")]
    [second] = await store.outbox.claim(CH, lease=30, digest_threshold=10)
    assert second.record.number == "2"
    async with store.unit() as u:
        await u.outbox.settle([second.id], DeliveryStatus.FAILED, http_status=403, code="Forbidden", error="no")
        await u.outbox.forget_card(first.record_id, CH)
    [third] = await store.outbox.claim(CH, lease=30, digest_threshold=10)
    assert (third.record.etag, third.event_type, third.previous_state) == ("W/0b", EventType.CHANGED,
                                                                          "AwaitingApproval")
    assert await store.outbox.claim(CH, lease=30, digest_threshold=10) == []
    assert await store.outbox.oldest_pending_age() == 0.0  # same clock: claimed, not yet old
    async with store.unit() as u:
        await u.outbox.settle([third.id], DeliveryStatus.DEAD, next_at=T0 + 5)
    assert await store.outbox.sent_for_source("invoice", "10") == 1
    assert await store.outbox.replay(channel_id=CH2) == []
    assert await store.outbox.replay(delivery_id=second.id) == [second.id]
    assert await store.outbox.replay() == [third.id]
    assert (await store.outbox.get(second.id)).attempts == 0
    assert await store.outbox.cards_in(CH) == []


async def test_many_new_items_go_as_one_digest_and_a_batch_window_holds_them(store, db, clock):
    await linked(store, CH)
    writer = PollWriter(db, clock)
    await writer.apply(INV, "10", [change(rec(i)) for i in range(5)], [Binding(CH, "10")])
    claimed = await store.outbox.claim(CH, lease=30, digest_threshold=3)
    assert sorted(d.record.number for d in claimed) == ["0", "1", "2", "3", "4"]
    async with store.unit() as u:
        await u.outbox.settle([d.id for d in claimed], DeliveryStatus.DIGESTED, digest_id=42)
    assert await store.outbox.counts() == {"digested": 5}
    await writer.apply(INV, "10", [change(rec(i)) for i in range(5, 7)], [Binding(CH, "10")])
    assert await store.outbox.defer_new(CH, T0 + 300) == 2
    assert await store.outbox.claim(CH, lease=30, digest_threshold=3) == []  # held until the window ends
    async with store.unit() as u:  # and Teams asks for a longer wait there
        await u.channels.hold(CH, T0 + 400)
        await u.channels.hold(CH, T0 + 350)  # (an earlier hold changes nothing)
    clock.advance(300)
    assert await store.outbox.due_channels() == [] and await store.outbox.next_due_at() == T0 + 400
    clock.advance(100)
    assert await store.outbox.due_channels() == [CH]
    assert len(await store.outbox.claim(CH, lease=30, digest_threshold=3)) == 2  # still batched: together


async def test_backfill_queues_each_event_once_and_leases_are_released(store, db, clock):
    await linked(store, CH)
    items = [(i + 1, r) for i, r in enumerate([rec(0, cost_center="A"), rec(1, cost_center="B")])]
    await PollWriter(db, clock).apply(INV, "10", [change(r) for _, r in items], [])
    narrowed = Binding(CH, "10", cost_centers=frozenset({"A"}))
    async with store.unit() as u:
        assert await u.outbox.backfill(CH, items, narrowed) == 1
        assert await u.outbox.backfill(CH, items, Binding(CH, "10")) == 1  # the first was queued already
    await store.outbox.claim(CH, lease=30, digest_threshold=10)
    clock.advance(31)
    await store.outbox.claim(CH, lease=60, digest_threshold=10)
    async with store.unit() as u:
        assert await u.outbox.release_expired_leases() == 1
    assert await store.outbox.counts() == {"pending": 1, "sending": 1}
    async with store.unit() as u:
        released = await u.outbox.release_all_leases()
    # SQLite has one worker: everything is released; PostgreSQL may have other replicas sending right now
    assert released == (1 if db.dialect == "sqlite" else 0)


# ------------------------------------------------------------------ people, claims, reminders


async def test_routing_goes_through_every_batch_in_one_call_and_with_nobody_to_route_to_reads_nothing(
        store, db, clock, monkeypatch):
    import store.people as people_module

    monkeypatch.setattr(people_module, "ROUTE_BATCH", 2)  # (five events: three batches)
    writer = PollWriter(db, clock)
    await writer.apply(INV, "10", [change(rec(i, approver="ALAIN")) for i in range(5)], [])
    assert await store.people.route_personal() == 0  # nobody linked: the mark moves past all five
    assert await db.scalar("SELECT value FROM meta WHERE name = ?", (people_module.ROUTED_MARK,)) == str(
        await db.scalar("SELECT max(id) FROM events"))
    await writer.apply(INV, "10", [change(rec(i, approver="ALAIN"), EventType.CHANGED, "x") for i in range(5)], [])
    async with store.unit() as u:
        await u.channels.upsert(ref("a:chat"))
        await u.people.put(Person("ALAIN", "Alain", aad_object_id="aad-1", teams_id="29:a", conversation_id="a:chat"))
    assert await store.people.route_personal() == 5  # the five changes, over three batches, in one call
    assert await store.outbox.counts("a:chat") == {"pending": 5}


async def test_people_are_mapped_and_personal_chats_routed(store, db, clock):
    alain = Person("ALAIN", "Alain", aad_object_id="aad-1", teams_id="29:a", conversation_id="a:chat")
    async with store.unit() as u:
        await u.channels.upsert(ref("a:chat"))
        assert await u.people.put(alain)
        assert not await u.people.put(alain)
        assert await u.people.put(Person("BEA", "Bea", upn="bea@x", status=PersonStatus.PENDING))
        await u.people.set_personal(["BEA"], False)
    assert [p.ifs_user for p in await store.people.all()] == ["ALAIN", "BEA"]
    assert list(await store.people.active()) == ["ALAIN"]
    assert [p.ifs_user for p in await store.people.of_user("AAD-1", None)] == ["ALAIN"]
    assert [p.ifs_user for p in await store.people.of_user(None, "29:a")] == ["ALAIN"]
    assert not (await store.people.get("BEA")).personal
    writer = PollWriter(db, clock)
    await writer.apply(INV, "10", [change(rec(1, approver="alain")), change(rec(2, approver="BEA"))], [])
    assert [r.number for r in await store.people.waiting_for(["ALAIN"])] == ["1"]
    assert await store.people.route_personal() == 1
    assert await store.people.route_personal() == 0  # the mark moved on
    async with store.unit() as u:
        assert await u.people.backfill_personal(alain) == 0  # queued already (one per event and chat)
        await u.people.set_status("BEA", PersonStatus.ACTIVE)
        # an import naming another Teams user drops the chat; the same one keeps it
        assert await u.people.replace_all([Person("ALAIN", "Alain B", aad_object_id="aad-2"),
                                           Person("BEA", "Bea", upn="bea@x")]) == 2
    assert (await store.people.get("ALAIN")).conversation_id is None
    assert (await store.people.get("BEA")).status is PersonStatus.ACTIVE
    async with store.unit() as u:
        assert await u.people.remove(["ALAIN", "NOBODY"]) == 1
    assert [p.ifs_user for p in await store.people.all()] == ["BEA"]


async def test_claims_hold_until_released_and_reminders_take_each_slot_once(store, db, clock):
    async with store.unit() as u:
        assert (await u.claims.claim("invoice:10:1", "aad-1", "Alain")).user_id == "aad-1"
        assert (await u.claims.claim("invoice:10:1", "aad-2", "Bea")).name == "Alain"  # held already
        assert not await u.claims.release("invoice:10:1", "aad-2")
    assert (await store.claims.get("invoice:10:1")).at == T0
    async with store.unit() as u:
        assert await u.claims.release("invoice:10:1", "aad-1")
    assert await store.claims.get("invoice:10:1") is None
    r = rec(5)
    await PollWriter(db, clock).apply(INV, "10", [change(r)], [])
    assert await store.claims.latest(r.record_id) == (EventType.NEW, r, None)
    assert await store.claims.cards_of(r.record_id) == []
    assert [(x.number, at) for x, at in await store.reminders.pending()] == [("5", T0)]
    async with store.unit() as u:
        await u.reminders.snooze("aad-1", r.record_id, T0 + 10)
        await u.reminders.snooze("aad-1", r.record_id, T0 + 20)
    assert await store.reminders.snoozed("aad-1", T0 + 15) == {r.record_id}
    assert await store.reminders.snoozed("aad-1", T0 + 20) == set()
    assert await store.reminders.take_slot("2026-12-07 08:00")
    assert not await store.reminders.take_slot("2026-12-07 08:00")
    assert not await store.reminders.take_slot("2026-12-06 08:00")
    assert await store.reminders.take_slot("2026-12-08 08:00")


# ------------------------------------------------------------------ the vault


async def test_the_vault_keeps_ciphertext_and_rotates_its_key(db, tmp_path, clock):
    vault = Vault(db, KeyRing(str(tmp_path / "master.key"), env={}), clock)
    await vault.set("ifs.client_secret", "s3cret")
    await vault.set("bot.app_id", "app")
    assert await vault.get("ifs.client_secret") == "s3cret"
    token = await db.scalar("SELECT token FROM secrets WHERE name = 'ifs.client_secret'")
    assert b"s3cret" not in bytes(token)
    assert await vault.rotate_key() == 2
    assert await vault.get("ifs.client_secret") == "s3cret"
    assert await vault.names() == [("bot.app_id", T0), ("ifs.client_secret", T0)]
    assert await vault.delete("bot.app_id") and not await vault.delete("bot.app_id")
    assert await vault.get("bot.app_id") is None


async def test_the_database_reports_readiness_and_its_disk(db, tmp_path):
    assert await db.writable()
    assert await db.size_bytes() > 4096
    if db.dialect == "sqlite":
        assert db.free_disk_bytes() > 0
        await db.backup_to(str(tmp_path / "copy.sqlite3"))
        assert (tmp_path / "copy.sqlite3").stat().st_size > 0
    else:
        assert db.free_disk_bytes() is None  # the server's disk is not ours to measure
        with pytest.raises(ConfigError, match="pg_dump"):
            await db.backup_to(str(tmp_path / "copy"))


# ------------------------------------------------------------------ PostgreSQL only


def test_placeholders_are_numbered_outside_quoted_text():
    assert translate("SELECT '?', \"a?\" FROM t WHERE a = ? AND b IN (?, ?)") == (
        "SELECT '?', \"a?\" FROM t WHERE a = $1 AND b IN ($2, $3)", True)
    assert translate("UPDATE t SET a = 'it''s ?' WHERE b = ?") == ("UPDATE t SET a = 'it''s ?' WHERE b = $1", False)
    assert translate("UPDATE t SET a = 1 WHERE b = ? RETURNING id")[1]


def test_the_migrations_render_for_postgresql_with_64_bit_integers_and_double_times():
    assert to_postgresql("CREATE TABLE x (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, at REAL, b BLOB,"
                         " t TEXT) WITHOUT ROWID") == (
        'CREATE TABLE x (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL,'
        ' at DOUBLE PRECISION, b BYTEA, t TEXT COLLATE "C")')
    rendered = "\n".join(s for m in MIGRATIONS for s in statements(m, "postgresql"))
    for sqlite_only in ("REAL", "BLOB", "WITHOUT ROWID", "strftime", "INTEGER"):
        assert sqlite_only not in rendered


async def _columns(db) -> dict[str, list[tuple[str, bool]]]:
    """Table -> [(column, not null)] in column order, whichever the back end."""
    if db.dialect == "sqlite":
        tables = [r[0] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: [(r["name"], bool(r["notnull"] or r["pk"])) for r in await db.fetchall(f"PRAGMA table_info({t})")]
                for t in tables}
    rows = await db.fetchall("SELECT table_name, column_name, is_nullable FROM information_schema.columns"
                             " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
    out: dict[str, list[tuple[str, bool]]] = {}
    for r in rows:
        out.setdefault(r[0], []).append((r[1], r[2] == "NO"))
    return out


async def test_the_postgresql_schema_has_the_sqlite_tables_and_columns(tmp_path, database_url):
    lite = await open_database(str(tmp_path / "s.sqlite3"))
    pg = await open_database(database_url)
    try:
        assert await _columns(pg) == await _columns(lite)
        kinds = dict(await pg.fetchall("SELECT column_name, data_type FROM information_schema.columns"
                                       " WHERE table_name = 'deliveries'"))
        assert (kinds["id"], kinds["next_at"], kinds["attempts"]) == ("bigint", "double precision", "bigint")
    finally:
        await lite.close()
        await pg.close()


async def test_replicas_starting_together_migrate_once(database_url):
    dbs = await asyncio.gather(*(open_pg(database_url) for _ in range(4)))
    try:
        assert await dbs[0].fetchall("SELECT version FROM schema_version ORDER BY version") == [
            (v,) for v in range(1, len(MIGRATIONS) + 1)]
    finally:
        for d in dbs:
            await d.close()


async def test_two_replicas_claiming_together_never_claim_a_delivery_twice_nor_take_a_slot_twice(database_url):
    clock = FakeClock(T0)
    one, two = await open_pg(database_url), await open_pg(database_url)
    try:
        channels = [f"19:c{i}" for i in range(4)]
        store = Store(one, clock)
        await linked(store, *channels)
        bound = [Binding(c, "10") for c in channels]
        await PollWriter(one, clock).apply(INV, "10", [change(rec(i)) for i in range(60)], bound)
        await PollWriter(one, clock).apply(INV, "10", [change(rec(i, etag="W/b"), EventType.CHANGED,
                                                              "AwaitingApproval") for i in range(0, 60, 3)], bound)
        claimed: list[int] = []

        async def worker(db: PgDatabase) -> None:
            outbox = Store(db, clock).outbox
            while True:
                got = []
                for c in channels:
                    got += await outbox.claim(c, lease=60, digest_threshold=1000)
                if not got:
                    return
                claimed.extend(d.id for d in got)

        await asyncio.gather(*(worker(d) for d in (one, two, one, two)))
        assert len(claimed) == 240 and len(set(claimed)) == 240  # 60 records in each of 4 channels, once each
        assert await store.outbox.counts() == {"sending": 240, "superseded": 80}
        # a reminder slot, taken by both at once, is taken once
        takes = await asyncio.gather(*(Store(d, clock).reminders.take_slot("2026-12-07 08:00")
                                       for d in (one, two, one, two)))
        assert sorted(takes) == [False, False, False, True]
    finally:
        await one.close()
        await two.close()


async def test_an_unreachable_server_is_one_line_without_the_password(pg_server):
    url = f"postgresql://notifier:hunter2@127.0.0.1:{pg_server.port}/no_such_database"
    with pytest.raises(ConfigError) as caught:
        await open_database(url)
    text = str(caught.value)
    assert "hunter2" not in text and "***" in text and "no_such_database" in text and "\n" not in text
    assert redact("postgres://u:p%40ss@db.example:5433/n?sslmode=require") == (
        "postgres://u:***@db.example:5433/n?sslmode=require")
    assert redact("postgres://u:p%40ss@db.example/n", mask=None) == "postgres://u@db.example/n"


def test_a_password_in_the_config_file_url_is_refused_but_the_environment_may_carry_one(tmp_path):
    config = tmp_path / "notifier.toml"
    config.write_text('[service]\ndatabase = "postgresql://notifier:hunter2@db.example/notifier"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert "hunter2" not in str(caught.value) and "PGPASSWORD" in str(caught.value)
    config.write_text('[service]\ndatabase = "postgresql://notifier@db.example/notifier"\n')
    url = "postgresql://notifier:hunter2@db.example/notifier"
    assert load_settings(config, env={"NOTIFIER__SERVICE__DATABASE": url}).service.database == url


def test_sqlite_stays_the_default():
    assert load_settings(None, env={}).service.database.endswith(".sqlite3")


async def test_a_task_started_inside_a_transaction_reads_outside_it(database_url):
    """Reads inside a transaction go through its connection, but only the transaction's own task's: a task
    started there (which inherits the context) reads through another connection, never one in use."""
    db = await open_pg(database_url)
    try:
        store = Store(db)
        async with store.unit() as u:
            await u.channels.upsert(ref(CH))
            assert await asyncio.create_task(store.channels.all()) == []  # not committed yet
            assert [c.channel_id for c in await store.channels.all()] == [CH]
        assert [c.channel_id for c in await store.channels.all()] == [CH]
    finally:
        await db.close()


async def test_the_backup_advice_names_pg_dump_without_the_password(database_url):
    url = database_url.replace("postgresql://notifier@", "postgresql://notifier:hunter2@")
    db = await open_pg(url)  # (the test server trusts loopback: the password is not even needed)
    try:
        with pytest.raises(ConfigError) as caught:
            await db.backup_to("/backups/notifier.dump")
        assert "hunter2" not in str(caught.value) and "***" not in str(caught.value)
        assert pg_dump_command(url, "/backups/notifier.dump") in str(caught.value)  # what `backup` prints too
        assert f"--dbname={database_url}" in str(caught.value)
    finally:
        await db.close()


def test_a_server_that_cannot_be_reached_stops_a_command_with_one_line_and_exit_2(tmp_path):
    from tests.test_fault_matrix import one_error_line, run_cli

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "notifier.toml"
    config.write_text(f'[service]\nkey_file = "{tmp_path / "master.key"}"\n')
    url = f"postgresql://notifier:hunter2@127.0.0.1:{port}/notifier"
    done = run_cli(config, "audit", env={"NOTIFIER__SERVICE__DATABASE": url})
    line = one_error_line(done, 2, "service.database")
    assert f"postgresql://notifier:***@127.0.0.1:{port}/notifier" in line
    assert "hunter2" not in done.stderr + done.stdout


async def test_a_lost_server_makes_the_database_unready_and_fails_calls_with_a_database_error():
    if find_binaries() is None:
        pytest.skip(NOT_INSTALLED)
    server = PostgresServer().start()  # its own server: this one is stopped under the test's feet
    try:
        db = await open_pg(server.new_database())
        assert await db.writable()
    finally:
        server.stop()
    try:
        assert not await db.writable()
        with pytest.raises(DB_ERRORS):
            await Store(db).channels.all()
    finally:
        await db.close()


async def test_readyz_answers_not_ready_while_the_server_is_away(tmp_path, ifs):
    if find_binaries() is None:
        pytest.skip(NOT_INSTALLED)
    server = PostgresServer().start()
    try:
        svc = await service_from(write_config(tmp_path, database=server.new_database()), ifs.base_url)
        await svc.start(background=False)
        async with httpx.AsyncClient(base_url=svc.base_url) as client:
            ready = (await client.get("/readyz")).json()
            server.stop()
            away = await client.get("/readyz")
    finally:
        server.stop()
    with contextlib.suppress(*DB_ERRORS):  # (stopping writes an audit row last: it has nowhere to go)
        await svc.stop()
    await svc.db.close()
    assert ready["ready"] and ready["database"] and "disk" not in ready  # a server's disk is not ours to watch
    assert away.status_code == 503 and away.json()["database"] is False
