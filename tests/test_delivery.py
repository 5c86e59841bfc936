"""Delivery worker through the real adapter to the limit-enforcing connector stand-in, on a fake clock."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from bot.delivery import CardRenderer, DeliveryWorker, Outcome, classify
from core.clock import FakeClock
from core.domain import Binding, ChannelRef, EventType, FinanceRecord, RecordKind
from core.errors import SendError
from core.settings import DeliverySettings
from simulator.connector import ConnectorStandIn
from store.audit import AuditLog
from store.bindings import Bindings
from store.channels import Channels
from store.outbox import Outbox
from store.poll_writer import PollWriter
from tests.serving import wait_until

CH = "19:finance@thread.tacv2"


def record(i: int, state: str = "Preliminary", amount: str = "100") -> FinanceRecord:
    return FinanceRecord(kind=RecordKind.INVOICE, company="10", key=f"Company=10^InvoiceId={i}", number=str(i),
                         state=state, etag=f"W/\"{i}:{state}\"", party_id=f"S{i}", party_name=f"Supplier {i}",
                         amount=Decimal(amount) + i, currency="EUR", doc_date=date(2026, 11, 1),
                         due_date=date(2026, 12, 1), deep_link=f"https://ifs.example.com/x?id={i}")


@pytest.fixture
async def rig(tmp_path, ifs):
    """A service (real adapter, real SQLite) plus a worker and a connector sharing one fake clock."""
    from tests.conftest import make_service

    clock = FakeClock()
    connector = ConnectorStandIn(clock=clock)
    await connector.start()
    svc = await make_service(tmp_path, ifs.base_url)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    def worker(**overrides) -> DeliveryWorker:
        settings = replace(DeliverySettings(), **overrides)
        return DeliveryWorker(svc.db, svc.sender, CardRenderer(svc.rendering.render_record, svc.rendering.render_digest,
                                                                svc.rendering.render_reply),
                              settings, clock=clock, sleep=fake_sleep,
                              rng=random.Random(7))

    async with svc.db.transaction() as conn:
        await Channels(svc.db).upsert(conn, ChannelRef(CH, "tenant", "team-1", connector.service_url, reference={
            "channelId": "msteams", "serviceUrl": connector.service_url, "bot": {"id": "28:bot"},
            "conversation": {"id": CH, "isGroup": True, "conversationType": "channel", "tenantId": "tenant"}}))
        await Bindings(svc.db).put(conn, Binding(CH, "10"))

    class Rig:
        pass

    r = Rig()
    r.clock, r.connector, r.svc, r.worker, r.slept = clock, connector, svc, worker, slept
    r.writer = PollWriter(svc.db, clock)

    async def emit(changes):
        return await r.writer.apply(RecordKind.INVOICE, "10", [(e, rec.to_dict(), prev, step)
                                                              for e, rec, prev, step in changes], [Binding(CH, "10")])

    async def drain(w: DeliveryWorker, max_rounds: int = 10_000) -> None:
        outbox = Outbox(svc.db, clock)
        for _ in range(max_rounds):
            await w.run_once()
            due = await outbox.next_due_at()
            if due is None:
                return
            if due > clock.time():
                clock.advance(due - clock.time())
        raise AssertionError("outbox did not drain")

    r.emit, r.drain = emit, drain
    yield r
    await svc.stop()
    await svc.db.close()
    await connector.stop()


async def status_counts(svc) -> dict[str, int]:
    return await Outbox(svc.db).counts()


async def test_200_cards_paced_under_teams_limits_none_lost_none_duplicated(rig):
    await rig.emit([(EventType.NEW, record(i), None, "") for i in range(200)])
    w = rig.worker(digest_threshold=10_000)
    start = rig.clock.monotonic()
    await rig.drain(w)
    posts = rig.connector.posts(CH)
    numbers = sorted(int(p.activity["attachments"][0]["content"]["fallbackText"].split()[2].strip(":"))
                     for p in posts) if posts else []
    assert len(posts) == 200
    assert numbers == list(range(200))
    assert rig.connector.throttled == 0  # paced, not bounced
    elapsed = rig.clock.monotonic() - start
    assert elapsed >= 90  # 60 per 30 s cannot be beaten: 200 posts need more than 90 s of channel time
    assert (await status_counts(rig.svc)) == {"sent": 200}


async def test_the_worker_outlives_a_database_that_fails_for_a_while(rig, caplog):
    """Every read and write of the outbox fails (its table is away, as in a lost connection or a full disk):
    the worker logs each failed cycle and goes on, and delivers once the table is back."""
    w = rig.worker()
    task = asyncio.create_task(w.run(idle=0.02))
    try:
        async with rig.svc.db.transaction() as conn:
            await conn.execute("ALTER TABLE deliveries RENAME TO deliveries_away")
        with caplog.at_level(logging.ERROR, logger="bot.delivery"):
            assert await wait_until(
                lambda: sum(r.getMessage() == "delivery cycle failed" for r in caplog.records) >= 3)
        async with rig.svc.db.transaction() as conn:
            await conn.execute("ALTER TABLE deliveries_away RENAME TO deliveries")
        await rig.emit([(EventType.NEW, record(1), None, "")])
        w.wake()
        assert await wait_until(lambda: len(rig.connector.posts(CH)) == 1)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_long_retry_after_holds_the_channel_in_the_store_not_the_delivery_round(rig):
    """Teams asks one channel to wait 10 minutes: a delivery round does not wait that out (every other
    channel's cards would wait with it); the channel is held in the store until then, for every replica,
    and its cards are sent after."""
    other = "19:other@thread.tacv2"
    async with rig.svc.db.transaction() as conn:
        await Channels(rig.svc.db).upsert(conn, ChannelRef(other, "tenant", "team-1", rig.connector.service_url,
                                                           reference={
            "channelId": "msteams", "serviceUrl": rig.connector.service_url, "bot": {"id": "28:bot"},
            "conversation": {"id": other, "isGroup": True, "conversationType": "channel", "tenantId": "tenant"}}))
    await rig.emit([(EventType.NEW, record(i), None, "") for i in (1, 2)])
    rig.connector.inject(429, code="Throttled", conversation=CH, retry_after=600)
    w = rig.worker(digest_threshold=1000)
    await w.run_once()  # the first card: 429, Retry-After 600
    await rig.writer.apply(RecordKind.INVOICE, "10", [(EventType.NEW, record(3).to_dict(), None, "")],
                           [Binding(other, "10")])
    before = rig.clock.time()

    await w.run_once()

    assert rig.clock.time() - before < 5  # the round did not sleep out the 600 s
    assert len(rig.connector.posts(other)) == 1 and rig.connector.posts(CH) == []
    due = await Outbox(rig.svc.db).next_due_at()
    assert due is not None and due >= before + 590
    await rig.emit([(EventType.NEW, record(4), None, "")])  # a card queued during the wait ...
    await rig.worker(digest_threshold=1000).run_once()  # ... is not sent by another replica's worker either
    assert rig.connector.posts(CH) == [] and len(rig.connector.rejected) == 1
    await rig.drain(w)  # and after the wait, the channel's three cards go
    assert len(rig.connector.posts(CH)) == 3 and rig.connector.rejected[0].at + 600 <= rig.connector.posts(CH)[0].at


async def test_429_is_honoured_and_retried(rig):
    await rig.emit([(EventType.NEW, record(1), None, "")])
    rig.connector.inject(429, code="Throttled", retry_after=7)
    w = rig.worker()
    t0 = rig.clock.time()
    await rig.drain(w)
    assert len(rig.connector.posts(CH)) == 1
    refused_at, accepted_at = rig.connector.rejected[0].at, rig.connector.posts(CH)[0].at
    assert accepted_at - refused_at >= 7 and rig.clock.time() - t0 >= 7
    audit = await AuditLog(rig.svc.db).recent(category="delivery")
    assert [e.outcome for e in reversed(audit)] == ["retry", "ok"]
    assert audit[1].detail["status"] == 429


async def test_5000_new_events_become_a_digest_within_two_minutes(rig):
    await rig.emit([(EventType.NEW, record(i), None, "") for i in range(5000)])
    w = rig.worker()
    t0 = rig.clock.time()
    await rig.drain(w)
    posts = rig.connector.posts(CH)
    assert 1 <= len(posts) <= 5
    assert rig.clock.time() - t0 <= 120
    assert (await status_counts(rig.svc)) == {"digested": 5000}
    text = str(posts[0].activity)
    assert "5,000" in text or "5000" in text


async def test_changed_and_resolved_update_the_card_in_place(rig):
    await rig.emit([(EventType.NEW, record(1), None, "")])
    w = rig.worker()
    await rig.drain(w)
    await rig.emit([(EventType.CHANGED, record(1, amount="900"), "Preliminary", "")])
    await rig.drain(w)
    await rig.emit([(EventType.RESOLVED, record(1, state="PostedAuth"), "Preliminary", "")])
    await rig.drain(w)
    assert len(rig.connector.posts(CH)) == 1
    updates = rig.connector.updates(CH)
    assert len(updates) == 2 and {u.activity_id for u in updates} == {rig.connector.posts(CH)[0].activity_id}
    assert "EUR\u00a0901.00 — Awaiting authorization" in updates[0].activity["attachments"][0]["content"]["fallbackText"]
    shown = list(rig.connector.cards(CH).values())[0]
    assert shown["fallbackText"].endswith("Authorized and posted")


async def test_card_gone_posts_a_fresh_one(rig):
    await rig.emit([(EventType.NEW, record(1), None, "")])
    w = rig.worker()
    await rig.drain(w)
    rig.connector.inject(404, code="ActivityNotFoundInConversation")
    await rig.emit([(EventType.CHANGED, record(1, amount="5"), "Preliminary", "")])
    await rig.drain(w)
    assert len(rig.connector.posts(CH)) == 2
    assert (await status_counts(rig.svc)).get("sent") == 2


async def test_bot_removed_marks_channel_inactive_and_stops(rig):
    await rig.emit([(EventType.NEW, record(i), None, "") for i in range(3)])
    rig.connector.remove_bot(CH)
    w = rig.worker()
    await w.run_once()
    await w.run_once()
    channel = await Channels(rig.svc.db).get(CH)
    assert not channel.active and channel.inactive_reason == "BotNotInConversationRoster"
    assert len(rig.connector.rejected) == 1  # no retry storm
    assert (await status_counts(rig.svc)) == {"pending": 3}  # kept for a reinstall
    from bot.status import build_status
    view = await build_status(rig.svc.db, None, channel_id=CH, now=rig.clock.time())
    assert any("BotNotInConversationRoster" in c for c in view.inactive_channels)


async def test_transient_errors_retry_until_max_age_then_dead(rig):
    await rig.emit([(EventType.NEW, record(1), None, "")])
    rig.connector.inject(503, count=1_000)
    w = rig.worker(max_age_hours=1)
    await rig.drain(w)
    counts = await status_counts(rig.svc)
    assert counts == {"dead": 1}
    attempts = [e for e in await AuditLog(rig.svc.db).recent(limit=500, category="delivery")]
    assert attempts[0].outcome == "dead" and all(e.outcome == "retry" for e in attempts[1:])
    assert rig.clock.time() - attempts[-1].at <= 3600
    ids = await Outbox(rig.svc.db, rig.clock).replay(delivery_id=attempts[0].delivery_id)
    rig.connector.clear_faults()
    await rig.drain(w)
    assert ids and (await status_counts(rig.svc)) == {"sent": 1}


async def test_connector_down_then_back_delivers_everything_and_nothing_dies_early(rig):
    await rig.emit([(EventType.NEW, record(i), None, "") for i in range(5)])
    rig.connector.inject(503, count=12)
    rig.connector.drop(count=4)
    w = rig.worker()
    t0 = rig.clock.time()
    await rig.drain(w)
    assert (await status_counts(rig.svc)) == {"sent": 5}
    assert rig.clock.time() - t0 < 24 * 3600
    outcomes = {e.outcome for e in await AuditLog(rig.svc.db).recent(limit=500, category="delivery")}
    assert outcomes == {"retry", "ok"}


async def test_other_4xx_fails_for_replay_and_pause_holds_work(rig):
    await rig.emit([(EventType.NEW, record(1), None, "")])
    rig.connector.inject(400, code="BadArgument")
    w = rig.worker()
    await rig.drain(w)
    assert (await status_counts(rig.svc)) == {"failed": 1}
    async with rig.svc.db.transaction() as conn:
        await Channels(rig.svc.db).set_paused(conn, CH, True)
    await Outbox(rig.svc.db, rig.clock).replay(channel_id=CH)
    await w.run_once()
    assert (await status_counts(rig.svc)) == {"pending": 1}
    async with rig.svc.db.transaction() as conn:
        await Channels(rig.svc.db).set_paused(conn, CH, False)
    await rig.drain(w)
    assert (await status_counts(rig.svc)) == {"sent": 1}


async def test_quiet_hours_hold_everything_until_they_end(rig):
    await rig.emit([(EventType.NEW, record(1), None, "")])
    w = rig.worker(quiet_hours="00:00-23:59")
    assert await w.run_once() == 0
    assert rig.connector.posts(CH) == []


async def test_batch_window_holds_new_items_and_sends_one_digest_when_it_closes(rig):
    from datetime import UTC, datetime
    now = datetime.fromtimestamp(rig.clock.time(), UTC)
    window = f"{now.hour:02d}:00-{(now.hour + 1) % 24:02d}:00"
    await rig.emit([(EventType.NEW, record(i), None, "") for i in range(3)])
    w = rig.worker(batch_windows=(window,))
    await w.run_once()
    assert rig.connector.posts(CH) == []
    await rig.drain(w)
    assert len(rig.connector.posts(CH)) == 1
    assert datetime.fromtimestamp(rig.clock.time(), UTC).hour == (now.hour + 1) % 24
    assert (await status_counts(rig.svc)) == {"digested": 3}


async def test_channel_quiet_hours_hold_that_channel_only_until_they_end(rig):
    from datetime import UTC, datetime
    now = datetime.fromtimestamp(rig.clock.time(), UTC)
    span = f"{now.hour:02d}:00-{(now.hour + 2) % 24:02d}:00"
    async with rig.svc.db.transaction() as conn:
        await Channels(rig.svc.db).set_quiet_hours(conn, CH, span)
    await rig.emit([(EventType.NEW, record(1), None, "")])
    w = rig.worker()
    assert await w.run_once() == 0 and rig.connector.posts(CH) == []
    rig.clock.advance(2 * 3600)
    await rig.drain(w)
    assert len(rig.connector.posts(CH)) == 1
    assert datetime.fromtimestamp(rig.connector.posts(CH)[0].at - rig.clock.monotonic() + rig.clock.time(),
                                  UTC).hour == (now.hour + 2) % 24


def test_classification_of_teams_answers():
    assert classify(SendError("x", status=429)) is Outcome.RETRY
    assert classify(SendError("x", status=None)) is Outcome.RETRY
    for status in (412, 502, 503, 504, 500):
        assert classify(SendError("x", status=status)) is Outcome.RETRY
    assert classify(SendError("x", status=403, code="BotNotInConversationRoster")) is Outcome.GONE
    assert classify(SendError("x", status=404, code="ConversationNotFound")) is Outcome.GONE
    assert classify(SendError("x", status=404, code="ActivityNotFoundInConversation")) is Outcome.CARD_GONE
    assert classify(SendError("x", status=403, code="Forbidden")) is Outcome.FAILED
    assert classify(SendError("x", status=413, code="MessageSizeTooBig")) is Outcome.FAILED
