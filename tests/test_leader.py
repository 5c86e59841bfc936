"""Several replicas on one database: one scheduler (leadership), channel leases and the shared Teams limits.

The PostgreSQL parts (advisory lock, two services) run against a real server from simulator.postgres and
are skipped, with the reason, only when its binaries are not installed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import replace

import pytest

from bench.common import bind
from core.clock import FakeClock
from core.domain import Binding, EventType, RecordKind
from core.errors import ConfigError
from core.ratelimit import WindowLimiter
from core.settings import ServiceSettings, Settings
from store.db import open_database
from store.leader import FileLeadership, Timing
from store.leases import ChannelLeases, Replicas
from store.outbox import DeliveryStatus, Outbox
from store.poll_writer import PollWriter
from store.unit import Store
from tests.conftest import sqlite_only
from tests.serving import wait_until

CH1, CH2 = "19:one@thread.tacv2", "19:two@thread.tacv2"


# --------------------------------------------------------------------------- settings and timing

def test_takeover_bound_and_replica_name_are_range_checked():
    ok = Settings(service=ServiceSettings(leader_takeover_seconds=15, replica_name="notifier-1.eu:a"))
    assert ok.validate() is ok
    for bad in (4.9, 601.0, float("nan")):
        with pytest.raises(ConfigError, match="leader_takeover_seconds"):
            Settings(service=ServiceSettings(leader_takeover_seconds=bad)).validate()
    for bad in ("has space", "x" * 65, "ümlaut"):
        with pytest.raises(ConfigError, match="replica_name"):
            Settings(service=ServiceSettings(replica_name=bad)).validate()


@pytest.mark.parametrize("takeover", [5.0, 7.0, 15.0, 30.0, 600.0])
def test_every_interval_fits_inside_the_takeover_bound(takeover):
    t = Timing(takeover)
    # a dead leader's host: the server ends its session, a follower's next try, the new leader's grace
    assert t.worst_takeover <= takeover
    # the old leader notices a lost session (one check, one timeout) before the new one may poll
    assert t.check_every + t.check_timeout < t.grace
    # a leader's writes stop before a new leader may start: its fence is shorter than the grace, and longer
    # than a healthy gap between two checks
    assert t.check_every + t.check_timeout < t.fence < t.grace
    # a replica is counted alive across missed heartbeats; a channel lease outlives a renewal period
    assert t.replica_expiry >= 3 * t.heartbeat_every and t.channel_lease > 2 * t.heartbeat_every


def test_a_limiter_counts_sends_made_elsewhere_and_keeps_its_history_when_its_share_changes():
    clock = FakeClock()
    lim = WindowLimiter(((7, 1.0), (60, 30.0)), clock.monotonic)
    lim.seed([clock.monotonic() - 0.5 + i * 0.01 for i in range(7)])  # seven sends half a second ago
    assert lim.try_acquire() == pytest.approx(0.5)
    clock.advance(0.5)
    assert lim.try_acquire() == 0.0
    app = WindowLimiter(((50, 1.0),), clock.monotonic)
    for _ in range(20):
        assert app.try_acquire() == 0.0
    app.set_windows(((25, 1.0),))  # a second replica joined: this one's share halves
    assert sum(app.try_acquire() == 0.0 for _ in range(10)) == 5


# --------------------------------------------------------------------------- SQLite: one active process

class Ticks:
    """An injected sleep that only yields to the event loop, counting how often it was asked to sleep."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, _seconds: float) -> None:
        self.count += 1
        await asyncio.sleep(0)


async def never_lost(reason: str) -> None:
    raise AssertionError(reason)


async def test_a_second_process_on_one_sqlite_file_stands_by_until_the_first_stops(tmp_path, caplog):
    path = str(tmp_path / "one.sqlite3")
    db = await open_database(path)
    tick = Ticks()
    gained: list[tuple[str, int]] = []

    def on_gain(name):
        async def gain(epoch: int) -> None:
            gained.append((name, epoch))
        return gain

    first = FileLeadership(db, path, "first", Timing(5), sleep=tick)
    second = FileLeadership(db, path, "second", Timing(5), sleep=tick)
    a = asyncio.create_task(first.run(on_gain("first"), never_lost))
    assert await wait_until(lambda: gained == [("first", 1)])
    caplog.set_level(logging.WARNING, logger="store.leader")
    b = asyncio.create_task(second.run(on_gain("second"), never_lost))
    assert await wait_until(lambda: tick.count >= 20)  # the second has tried again and again
    assert gained == [("first", 1)] and first.is_leader and not second.is_leader
    assert "first" in caplog.text and "stands by" in caplog.text and "PostgreSQL" in caplog.text
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)
    assert await wait_until(lambda: len(gained) == 2)
    assert gained[1] == ("second", 2) and second.is_leader
    row = await db.fetchone("SELECT epoch, holder FROM leadership WHERE name = 'scheduler'")
    assert tuple(row) == (2, "second")
    b.cancel()
    await asyncio.gather(b, return_exceptions=True)
    await db.close()


async def test_the_active_process_retries_a_start_that_failed_and_keeps_the_lock_meanwhile(tmp_path, caplog):
    """The epoch cannot be written for a while (its table is away, as on a full disk): the process keeps the
    lock (nobody else may poll), says so, and starts once the write works; without the retry the leadership
    task ended and the process never polled again."""
    path = str(tmp_path / "one.sqlite3")
    db = await open_database(path)
    tick = Ticks()
    gained: list[int] = []

    async def gain(epoch: int) -> None:
        gained.append(epoch)

    async with db.transaction() as conn:
        await conn.execute("ALTER TABLE leadership RENAME TO leadership_away")
    caplog.set_level(logging.WARNING, logger="store.leader")
    lead = FileLeadership(db, path, "serve", Timing(5), sleep=tick)
    task = asyncio.create_task(lead.run(gain, never_lost))
    try:
        assert await wait_until(lambda: tick.count >= 3)
        assert gained == [] and lead.is_leader and not task.done()
        assert not FileLeadership(db, path, "other", Timing(5)).try_lock()  # the lock is kept meanwhile
        assert "could not start polling and delivering" in caplog.text
        async with db.transaction() as conn:
            await conn.execute("ALTER TABLE leadership_away RENAME TO leadership")
        assert await wait_until(lambda: gained == [1])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


# --------------------------------------------------------------------------- channel leases (both back ends)

async def test_a_channel_has_one_lease_holder_taken_over_only_after_it_ran_out(db):
    clock = FakeClock()
    a, b = ChannelLeases(db, "a", clock), ChannelLeases(db, "b", clock)
    lease = dict(ttl=5.0, margin=1.0, horizon=3600.0)
    took = await a.take(CH1, cap=1, **lease)
    assert took is not None and took.sent == [] and not took.from_other
    assert await b.take(CH1, cap=5, **lease) is None  # a holds it
    assert await a.take(CH2, cap=1, **lease) is None  # a holds its share already
    clock.advance(4)
    assert await a.renew(CH1, 5.0) == clock.time() + 5.0
    clock.advance(5.5)  # ended half a second ago: within the margin for clocks that differ
    assert await b.take(CH1, cap=5, **lease) is None
    clock.advance(1)
    assert await a.renew(CH1, 5.0) is not None  # nobody took it meanwhile: a may go on
    await a.release(CH1)
    assert (await b.take(CH1, cap=5, **lease)) is not None
    assert await a.renew(CH1, 5.0) is None  # b's now
    assert await ChannelLeases(db, "c", clock).take(CH1, cap=5, **lease) is None
    assert await db.scalar("SELECT count(*) FROM channel_leases WHERE owner = 'b'") == 1


async def test_taking_over_a_channel_counts_its_recent_sends_and_frees_the_claims_of_the_old_holder(db):
    from bench.delivery import record

    clock = FakeClock()
    await bind(db, CH1, "https://smba.example.com", "C00")
    await PollWriter(db, clock).apply(RecordKind.INVOICE, "C00", [
        (EventType.NEW, record(0, i).to_dict(), None, "") for i in range(3)], [Binding(CH1, "C00")])
    outbox, store = Outbox(db, clock), Store(db, clock)
    a, b = ChannelLeases(db, "a", clock), ChannelLeases(db, "b", clock)
    lease = dict(ttl=5.0, margin=1.0, horizon=3600.0)
    assert await a.take(CH1, cap=1, **lease) is not None
    first = await outbox.claim(CH1, lease=120, digest_threshold=100)
    async with store.unit() as u:
        await u.outbox.settle([first[0].id], DeliveryStatus.SENT, http_status=200)
    sent_at = clock.time()
    clock.advance(1)
    stuck = await outbox.claim(CH1, lease=120, digest_threshold=100)  # then a dies mid-send
    clock.advance(10)
    taken = await b.take(CH1, cap=1, **lease)
    assert taken is not None and taken.from_other and taken.sent == [sent_at]
    assert (await outbox.get(stuck[0].id)).status is DeliveryStatus.PENDING  # not 120 s later: now
    assert (await outbox.counts()) == {"sent": 1, "pending": 2}
    again = await outbox.claim(CH1, lease=120, digest_threshold=100)  # b sends, and is stopped meanwhile
    assert (await outbox.get(again[0].id)).status is DeliveryStatus.SENDING
    await Replicas(db, "b", clock).leave()
    assert (await outbox.counts()) == {"sent": 1, "pending": 2}
    assert await db.scalar("SELECT count(*) FROM channel_leases") == 0


async def test_replicas_count_each_other_alive_and_a_clean_stop_leaves_at_once(db):
    clock = FakeClock()
    a, b = Replicas(db, "a", clock), Replicas(db, "b", clock)
    assert await a.beat(7.5) == 1
    assert await b.beat(7.5) == 2
    clock.advance(8)
    assert await a.beat(7.5) == 1  # b silent for longer than the expiry
    await b.beat(7.5)
    assert await a.live(7.5) == ["a", "b"]
    await ChannelLeases(db, "b", clock).take(CH1, ttl=5, cap=1, margin=1, horizon=3600)
    await b.leave()
    assert await a.live(7.5) == ["a"]
    assert await db.scalar("SELECT count(*) FROM channel_leases") == 0


# --------------------------------------------------------------------------- pacing across replicas

async def test_a_channel_lease_two_tasks_of_a_replica_share_is_given_up_by_the_last_of_them(db):
    from bot.delivery import SharedPacing
    clock = FakeClock()
    a, b = SharedPacing(db, "a", Timing(15), clock=clock), ChannelLeases(db, "b", clock)
    worker = await a.take(CH1, due=1)
    reminder = await a.take(CH1, due=None)  # a reminder for the channel the worker is delivering to
    assert worker is not None and not worker.joined and reminder is not None and reminder.joined
    await a.release(CH1)  # the reminder is done: the worker still sends there
    assert await ChannelLeases(db, "a", clock).held() == {CH1: "a"}
    clock.advance(Timing(15).channel_lease / 2)
    assert await b.take(CH1, ttl=5, cap=1, margin=1, horizon=3600) is None
    await a.release(CH1)
    assert await ChannelLeases(db, "a", clock).held() == {}


async def test_a_lease_renewal_and_a_heartbeat_do_not_wait_for_the_replicas_other_writes(db):
    clock = FakeClock()
    leases, replicas = ChannelLeases(db, "a", clock), Replicas(db, "a", clock)
    assert await leases.take(CH1, ttl=5, cap=1, margin=1, horizon=3600) is not None
    if db.dialect == "sqlite":
        return  # one connection, one process: nothing to overtake
    holding, done = asyncio.Event(), asyncio.Event()

    async def long_write() -> None:  # a poll writing a page, say
        async with db.transaction():
            holding.set()
            await done.wait()

    writer = asyncio.create_task(long_write())
    await asyncio.wait_for(holding.wait(), 30)
    try:
        assert await asyncio.wait_for(leases.renew(CH1, 5), 5) == clock.time() + 5
        assert await asyncio.wait_for(replicas.beat(7.5), 5) == 1
    finally:
        done.set()
        await writer


async def test_a_lone_replica_delivers_at_once_and_a_second_only_after_the_first_could_see_it(db):
    from bot.delivery import SharedPacing
    clock, timing = FakeClock(), Timing(15)
    a = SharedPacing(db, "a", timing, clock=clock)
    assert await a.take(CH1, due=2) is not None  # its first heartbeat is written on the way: it is alone
    b = SharedPacing(db, "b", timing, clock=clock)
    assert await b.take(CH2, due=2) is None  # a has not yet had a heartbeat period to count b
    clock.advance(1.5 * timing.heartbeat_every)
    assert await a.beat() == 2
    assert await b.take(CH2, due=2) is not None


async def test_two_replicas_keep_teams_limits_for_the_app_as_a_whole(tmp_path):
    """Through the real adapter to the limit-enforcing connector stand-in, on a fake clock."""
    from bench.delivery import ideal_last_post
    from bench.replicas import measure
    from simulator.connector import TEAMS_APP_PER_SECOND, TEAMS_LIMITS_PER_THREAD

    m = await measure(tmp_path, channels=12, per_channel=40)
    assert m["throttled_429"] == 0 and m["lost"] == 0 and m["duplicated"] == 0 and m["posts"] == 480
    assert m["settled_by_replica"]["replica-a"] > 100 and m["settled_by_replica"]["replica-b"] > 100
    # as fast as the windows allow every post out (9 s: 480 posts at 50/s app-wide), within 15 %
    ideal = ideal_last_post(12, 40, TEAMS_LIMITS_PER_THREAD, ((TEAMS_APP_PER_SECOND, 1.0),))
    assert ideal == 9.0 and ideal <= m["last_post_at"] <= ideal / 0.85


async def test_replicas_pacing_each_on_its_own_would_be_throttled(tmp_path):
    """The control: the measurement sees what the leases prevent."""
    from bench.replicas import measure

    m = await measure(tmp_path, channels=6, per_channel=20, naive=True)
    assert m["throttled_429"] > 0 and m["lost"] == 0


def test_settings_section_keeps_its_defaults():
    s = replace(ServiceSettings())
    assert s.leader_takeover_seconds == 15.0 and s.replica_name == ""


# --------------------------------------------------------------------------- PostgreSQL: the advisory lock

async def test_one_replica_holds_the_scheduler_lock_and_another_takes_over_when_its_session_ends(database_url):
    import asyncpg

    from store.leader import PgLeadership

    db = await open_database(database_url)
    timing = Timing(5)
    loop = asyncio.get_running_loop()
    events: list[tuple[str, str, object, float]] = []
    tries = {"a": 0, "b": 0}

    def hooks(name):
        async def gained(epoch: int) -> None:
            events.append((name, "gained", epoch, loop.time()))

        async def lost(reason: str) -> None:
            events.append((name, "lost", reason, loop.time()))

        async def sleep(seconds: float) -> None:
            tries[name] += 1
            await asyncio.sleep(seconds)
        return gained, lost, sleep

    ga, la, sa = hooks("a")
    gb, lb, sb = hooks("b")
    a = PgLeadership(db, database_url, "a", timing, sleep=sa)
    b = PgLeadership(db, database_url, "b", timing, sleep=sb)
    ta = asyncio.create_task(a.run(ga, la))
    tb = None
    admin = await asyncpg.connect(database_url)
    try:
        assert await wait_until(lambda: [e[:3] for e in events] == [("a", "gained", 1)], 10)
        tb = asyncio.create_task(b.run(gb, lb))
        assert await wait_until(lambda: tries["b"] >= 4, 10)  # b has asked again and again
        assert not b.is_leader and a.is_leader and len(events) == 1
        # a's session ends (an administrator, a cut connection): the server frees the lock with it
        cut = loop.time()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", a.backend_pid)
        assert await wait_until(lambda: any(e[:2] == ("b", "gained") for e in events), 3 * timing.takeover)
        lost = next(e for e in events if e[:2] == ("a", "lost"))
        gained = next(e for e in events if e[:2] == ("b", "gained"))
        assert "lock session" in str(lost[2]) or "no longer held" in str(lost[2])
        assert lost[3] <= gained[3], "the old leader stopped before the new one started"
        assert lost[3] - cut <= timing.check_every + timing.check_timeout + 0.5
        assert gained[3] - cut <= timing.takeover and gained[2] == 2
        assert b.is_leader and not a.is_leader
        assert tuple(await db.fetchone("SELECT epoch, holder FROM leadership")) == (2, "b")
    finally:
        for t in (ta, tb):
            if t is not None:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        await admin.close()
        await db.close()
    # cancelled: both sessions are gone, and with them the lock
    check = await asyncpg.connect(database_url)
    try:
        assert await check.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database ="
                                    " (SELECT oid FROM pg_database WHERE datname = current_database())") == 0
    finally:
        await check.close()


async def test_a_service_that_loses_the_lead_stops_its_scheduler_and_takes_it_again(tmp_path, ifs, database_url):
    import asyncpg

    from bench.common import make_service

    svc = await make_service(tmp_path, ifs.base_url, database=database_url,
                             service='timezone = "UTC"\nreplica_name = "solo"\nleader_takeover_seconds = 5')
    admin = await asyncpg.connect(database_url)

    async def actions() -> list[tuple[str, str | None, int | None]]:
        return [(e.action, e.actor, e.detail.get("epoch")) for e in
                reversed(await svc.audit.recent(limit=50, category="lifecycle"))]

    rows: list = []

    async def saw(n: int) -> bool:
        rows[:] = await actions()
        return len(rows) >= n

    try:
        await svc.start(web_runner=False, background=True)
        assert svc.shared and svc.pacing.shared
        await wait_until(lambda: saw(1), 15)
        assert rows == [("leadership acquired", "solo", 1)]
        assert await wait_until(lambda: svc.jobs.scheduler is not None, 5) and svc.jobs.epoch == 1
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", svc.leadership.backend_pid)
        await wait_until(lambda: saw(3), 15)
        assert rows[1][0] == "leadership lost" and rows[2] == ("leadership acquired", "solo", 2)
        assert await wait_until(lambda: svc.jobs.scheduler is not None, 5) and svc.jobs.epoch == 2
        assert await svc.pacing.replicas.live(60) == ["solo"]
    finally:
        await svc.stop()
        assert svc.jobs.scheduler is None
        assert await admin.fetchval("SELECT count(*) FROM replicas") == 0  # a clean stop leaves at once
        await svc.db.close()
        await admin.close()


@sqlite_only
async def test_a_one_off_poll_is_refused_while_another_process_runs_the_scheduler(service_factory, tmp_path):
    from core.errors import NotifierError

    svc = await service_factory()
    path = svc.settings.service.database
    other = FileLeadership(svc.db, path, "serving", Timing(15))
    assert other.try_lock()  # a `serve` on the same file
    try:
        with pytest.raises(NotifierError, match="another process runs the scheduler"):
            await svc.poll_once()
    finally:
        other.unlock()
    assert await svc.poll_once() == []  # nothing linked: nothing polled, but allowed
    assert not svc.leadership.is_leader  # and the lock given back
    assert other.try_lock()
    other.unlock()


async def test_a_one_off_poll_is_refused_while_a_replica_holds_the_lock(tmp_path, ifs, database_url):
    import asyncpg

    from bench.common import make_service
    from core.errors import NotifierError
    from store.leader import LEADER_KEY

    svc = await make_service(tmp_path, ifs.base_url, database=database_url)
    holder = await asyncpg.connect(database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_KEY)
        with pytest.raises(NotifierError, match="another process runs the scheduler"):
            await svc.poll_once()
        await holder.execute("SELECT pg_advisory_unlock_all()")
        assert await svc.poll_once() == []
    finally:
        await holder.close()
        await svc.ifs.aclose()
        await svc.db.close()


async def test_a_leader_that_has_not_checked_its_lock_for_longer_than_the_fence_writes_nothing(database_url):
    from pollers.job import FencedWriter
    from store.leader import LeadershipLost, PgLeadership

    clock = FakeClock()
    db = await open_database(database_url)
    lead = PgLeadership(db, database_url, "a", Timing(5), clock=clock)
    assert lead.current()  # not coordinating (a one-off command): nothing to fence
    gained = asyncio.Event()

    async def gain(epoch: int) -> None:
        gained.set()

    async def lost(reason: str) -> None:
        raise AssertionError(reason)

    task = asyncio.create_task(lead.run(gain, lost))
    try:
        assert await wait_until(gained.is_set, 10) and lead.current()
        clock.advance(lead.timing.fence + 0.01)  # as if the process had been frozen since its last check
        assert not lead.current()
        writer = FencedWriter(PollWriter(db, clock), lead.current)
        with pytest.raises(LeadershipLost):
            await writer.apply(RecordKind.ORDER, "10", [], [])
        assert await writer.ifs_available()  # reads go through
        assert await wait_until(lead.current, 10)  # its next check found the lock still held: current again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


async def test_poll_now_on_a_replica_that_does_not_poll_is_asked_of_the_one_that_does(tmp_path, ifs, database_url):
    from bench.common import make_service

    def config(name: str) -> str:
        return f'timezone = "UTC"\nreplica_name = "{name}"\nleader_takeover_seconds = 5'

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    leader = await make_service(tmp_path / "a", ifs.base_url, database=database_url, service=config("leader"))
    shutil.copy2(tmp_path / "a" / "master.key", tmp_path / "b" / "master.key")
    follower = await make_service(tmp_path / "b", ifs.base_url, database=database_url, service=config("follower"))
    try:
        await leader.start(web_runner=False, background=True)
        assert await wait_until(lambda: leader.jobs.scheduler is not None, 15)
        await follower.start(web_runner=False, background=True)
        assert follower.jobs.scheduler is None and not follower.leadership.is_leader
        asked: list[float] = []
        real = leader.jobs.poll_soon
        leader.jobs.poll_soon = lambda: (asked.append(1), real())[1]  # what `poll now` on the leader does
        follower.poll_soon()  # `poll now` in Teams, answered by the replica that does not poll
        assert await wait_until(lambda: asked == [1], 10)
        follower.poll_soon()
        assert await wait_until(lambda: asked == [1, 1], 10)
        assert follower.jobs.scheduler is None  # and it still does not poll
    finally:
        for svc in (follower, leader):
            await svc.stop()
            await svc.db.close()


async def test_a_channel_taken_over_mid_backlog_keeps_its_windows_across_the_hand_over(tmp_path):
    """Replica a posts 50 cards into one channel, then is stopped in the middle of the 51st; replica b takes
    the channel over and may post only 10 more before a's first post leaves the 30-second window."""
    from bench.common import make_service
    from bench.delivery import record
    from bot.delivery import DeliveryWorker, SharedPacing
    from core.settings import DeliverySettings
    from simulator.connector import ConnectorStandIn

    clock = FakeClock()
    connector = ConnectorStandIn(clock=clock)
    await connector.start()
    svc = await make_service(tmp_path, "http://127.0.0.1:9")
    try:
        await bind(svc.db, CH1, connector.service_url, "C00")
        await PollWriter(svc.db, clock).apply(RecordKind.INVOICE, "C00", [
            (EventType.NEW, record(0, i).to_dict(), None, "") for i in range(80)], [Binding(CH1, "C00")])
        stuck = asyncio.Event()

        class Stopping:  # a's sender: the 51st post never returns (the process is stopped meanwhile)
            async def post(self, channel, card, text):
                if len(connector.posts()) >= 50:
                    stuck.set()
                    await asyncio.Event().wait()
                return await svc.sender.post(channel, card, text)

        async def advance(seconds: float) -> None:
            clock.advance(seconds)
            await asyncio.sleep(0)

        timing = Timing(15)
        workers = {}
        for name, sender in (("a", Stopping()), ("b", svc.sender)):
            pacing = SharedPacing(svc.db, name, timing, clock=clock, sleep=advance)
            await pacing.beat()
            workers[name] = DeliveryWorker(svc.db, sender, svc.rendering.renderer(),
                                           DeliverySettings(digest_threshold=10**6), clock=clock, sleep=advance,
                                           pacing=pacing)
        clock.advance(2 * timing.heartbeat_every)
        a = asyncio.create_task(workers["a"].run_once())
        assert await wait_until(stuck.is_set, 20)
        a.cancel()  # a is stopped: its lease and its claim on the 51st card are given back
        await asyncio.gather(a, return_exceptions=True)
        first = connector.posts()[0].at
        assert len(connector.posts()) == 50 and clock.monotonic() - first < 15
        settled = 0
        while n := await workers["b"].run_once():  # b takes over: the 30 left, a's claim among them
            settled += n
        posts = connector.posts()
        assert settled == 30 and await Outbox(svc.db, clock).counts() == {"sent": 80} and len(posts) == 80
        assert connector.throttled == 0
        assert sum(p.at < first + 30 for p in posts) == 60  # b used what a had left of the window, no more
    finally:
        await svc.stop()
        await svc.db.close()
        await connector.stop()


@sqlite_only
async def test_a_second_service_on_one_sqlite_file_neither_polls_nor_delivers(tmp_path, ifs):
    from tests.conftest import make_service

    first = await make_service(tmp_path, ifs.base_url)
    second = await make_service(tmp_path, ifs.base_url)  # the same settings: the same file
    try:
        await first.start(web_runner=False, background=True)
        assert await wait_until(lambda: first.jobs.scheduler is not None, 10)
        await second.start(web_runner=False, background=True)
        assert await wait_until(lambda: second.leadership.holder == first.replica, 10)  # it stands by
        assert second.jobs.scheduler is None and not second._delivering and not second.leadership.is_leader
        assert first._delivering and first.leadership.is_leader
        await first.stop()
        assert await wait_until(lambda: second.jobs.scheduler is not None, 10)  # it takes over
        assert second._delivering and second.leadership.is_leader
    finally:
        for svc in (second, first):
            await svc.stop()
            await svc.db.close()


async def test_a_slow_send_keeps_its_channel_lease_so_no_other_replica_takes_the_channel_meanwhile(tmp_path):
    from bench.common import make_service
    from bench.delivery import record
    from bot.delivery import DeliveryWorker, SharedPacing
    from core.settings import DeliverySettings
    from simulator.connector import ConnectorStandIn

    clock = FakeClock()
    connector = ConnectorStandIn(clock=clock)
    await connector.start()
    svc = await make_service(tmp_path, "http://127.0.0.1:9")
    timing = Timing(5)
    other = ChannelLeases(svc.db, "b", clock)
    taken_by_other: list[bool] = []
    try:
        await bind(svc.db, CH1, connector.service_url, "C00")
        await PollWriter(svc.db, clock).apply(RecordKind.INVOICE, "C00", [
            (EventType.NEW, record(0, 1).to_dict(), None, "")], [Binding(CH1, "C00")])

        ticks: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

        async def tick(_seconds: float) -> None:  # the send's lease keeper waits here until the test lets it go
            done = asyncio.get_running_loop().create_future()
            await ticks.put(done)
            await done

        class Slow:  # Teams answers after two lease lengths
            async def post(self, channel, card, text):
                waiting = await asyncio.wait_for(ticks.get(), 10)
                for _ in range(6):
                    clock.advance(timing.channel_lease / 3)
                    waiting.set_result(None)  # the keeper looks at the lease now ...
                    waiting = await asyncio.wait_for(ticks.get(), 10)  # ... and waits again: it has looked
                    taken_by_other.append(await other.take(CH1, ttl=timing.channel_lease, cap=5,
                                                           margin=timing.clock_margin, horizon=3600) is not None)
                return await svc.sender.post(channel, card, text)

        pacing = SharedPacing(svc.db, "a", timing, clock=clock)
        await pacing.beat()
        clock.advance(2 * timing.heartbeat_every)
        worker = DeliveryWorker(svc.db, Slow(), svc.rendering.renderer(), DeliverySettings(), clock=clock,
                                pacing=pacing, tick=tick)
        assert await worker.run_once() == 1
        assert taken_by_other == [False] * 6 and len(connector.posts()) == 1
    finally:
        await svc.stop()
        await svc.db.close()
        await connector.stop()
