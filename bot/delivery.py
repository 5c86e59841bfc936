"""Delivery worker: outbox -> Teams, paced under Teams' limits, retried, updated in place, digested in surges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import ChannelRef, EventType, PostedCard
from core.errors import SendError
from core.metrics import Metrics
from core.ratelimit import MultiLimiter, WindowLimiter
from core.retry import RetryPolicy
from core.settings import DeliverySettings, parse_span
from store.audit import AuditLog
from store.channels import Channels
from store.db import Database
from store.leader import Timing
from store.leases import ChannelLeases, Replicas, Taken
from store.outbox import Delivery, DeliveryStatus, Outbox
from store.unit import Store, Unit

log = logging.getLogger(__name__)

# Teams: per bot per thread 7/1 s, 8/2 s, 60/30 s, 1800/h; per app 50 requests/s per tenant.
CHANNEL_WINDOWS: tuple[tuple[int, float], ...] = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
CHANNEL_HORIZON = max(seconds for _, seconds in CHANNEL_WINDOWS)  # how far back a channel's sends count
APP_WINDOWS: tuple[tuple[int, float], ...] = ((50, 1.0),)
# A channel Teams asked to wait longer than this (Retry-After) is held in the store until then (Channels.hold):
# no replica sends there, and delivery rounds go on without it; shorter waits are waited out in the round.
LONG_WAIT = 10.0


class Sender(Protocol):
    async def post(self, channel: ChannelRef, card: dict[str, Any], text: str) -> PostedCard: ...

    async def update(self, channel: ChannelRef, posted: PostedCard, card: dict[str, Any], text: str) -> None: ...

    async def reply(self, channel: ChannelRef, posted: PostedCard, text: str) -> None: ...


class Outcome(StrEnum):
    RETRY = "retry"  # transient: back off (Retry-After wins)
    GONE = "gone"  # the bot can no longer reach the conversation: deactivate, keep the work
    CARD_GONE = "card_gone"  # the card we would update no longer exists: post a fresh one
    FAILED = "failed"  # the request itself is wrong: keep it for replay


GONE_CODES = {"BotNotInConversationRoster", "ConversationNotFound", "BotDisabledByAdmin",
              "ConversationBlockedByUser"}


def classify(err: SendError) -> Outcome:
    """The one place where a Teams answer becomes a recovery intent (status and error code together)."""
    if err.status is None or err.status in (412, 429, 502, 503, 504) or (err.status >= 500 and err.status != 501):
        return Outcome.RETRY
    if err.status == 404 and err.code == "ActivityNotFoundInConversation":
        return Outcome.CARD_GONE
    if err.status in (403, 404) and err.code in GONE_CODES:
        return Outcome.GONE
    return Outcome.FAILED


@dataclass(frozen=True)
class CardRenderer:
    """Adapter from deliveries to the pure card builders (kept here so the worker stays about delivery)."""

    render_record: Callable[[Delivery], Awaitable[tuple[dict[str, Any], str]]]  # (it reads who is mentioned)
    render_digest: Callable[[Sequence[Delivery]], tuple[dict[str, Any], str]]
    render_reply: Callable[[Delivery], str]


class SoloPacing:
    """One process delivers (SQLite): every channel is this process's, the app's whole limit too."""

    shared = False
    max_sleep = math.inf

    def ready(self) -> bool:
        return True

    def app_windows(self, windows: Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
        return tuple(windows)

    async def take(self, channel_id: str, due: int | None) -> Taken | None:
        return Taken(math.inf, [], False, joined=True)

    async def keep(self, channel_id: str) -> bool:
        return True

    async def release(self, channel_id: str) -> None:
        return None

    async def run(self) -> None:
        return None

    async def leave(self) -> None:
        return None


class SharedPacing:
    """Several replicas deliver from one database (PostgreSQL), Teams' limits kept for the app as a whole.

    A channel is delivered only under this replica's lease on it (store.leases): taken when the worker
    has work there, with the channel's sends of the last hour counted into its limiter; renewed while
    there is work; given up when the work is done. A replica holds at most its share of the channels that
    have work (due / live replicas, rounded up), so a burst is spread over the replicas. The app-wide
    limit (50/s) is divided by the number of live replicas (a heartbeat each, every
    Timing.heartbeat_every); a new replica delivers only after its heartbeat has been visible to the
    others for a heartbeat period, so their shares shrink before it sends.
    """

    shared = True

    def __init__(self, db: Database, replica: str, timing: Timing, *, clock: Clock = SYSTEM_CLOCK,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.replica = replica
        self.timing = timing
        self.replicas = Replicas(db, replica, clock)
        self.leases = ChannelLeases(db, replica, clock)
        self.now = clock.time
        self.sleep = sleep
        self.live = 1
        self.max_sleep = timing.channel_lease / 4  # a wait for the limiter renews the lease on the way
        self._first_beat: float | None = None
        self._until: dict[str, float] = {}
        self._users: dict[str, int] = {}  # tasks of this replica sending under a channel's lease (the worker's,
        # a reminder's, a card refresh's): the lease is given up when the last of them is done
        self._take_lock = asyncio.Lock()  # one take at a time: the cap counts this replica's leases

    async def beat(self) -> int:
        self.live = max(1, await self.replicas.beat(self.timing.replica_expiry))
        if self._first_beat is None:
            self._first_beat = self.now()
        return self.live

    async def run(self) -> None:
        """Heartbeats until cancelled."""
        failing = False
        while True:
            try:
                await self.beat()
                if failing:
                    log.warning("replica heartbeat written again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - the database may be away for a moment
                if not failing:
                    log.warning("replica heartbeat failed (retried every %g s): %s", self.timing.heartbeat_every, exc)
                failing = True
            await self.sleep(self.timing.heartbeat_every)

    def ready(self) -> bool:
        """Whether this replica may deliver: its heartbeat is written, and the other live replicas (if any)
        have had a heartbeat period to see it and shrink their share of the app-wide limit. Alone, at once."""
        if self._first_beat is None:
            return False
        return self.live <= 1 or self.now() >= self._first_beat + 1.5 * self.timing.heartbeat_every

    def app_windows(self, windows: Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
        return tuple((max(1, count // self.live), seconds) for count, seconds in windows)

    async def take(self, channel_id: str, due: int | None) -> Taken | None:
        """The channel's lease, if this replica may have it now; `due`: channels with work (None: no share
        applies, for a single message outside the outbox)."""
        if self._first_beat is None:  # the heartbeat loop has not run yet (or does not: a one-off worker)
            await self.beat()
        if not self.ready():
            return None
        if self._users.get(channel_id):  # another task of this replica holds it: share, while it runs
            if not await self.keep(channel_id):
                return None
            self._users[channel_id] += 1
            return Taken(self._until[channel_id], [], False, joined=True)
        t = self.timing
        cap = 1_000_000 if due is None else max(1, math.ceil(due / self.live))
        async with self._take_lock:
            taken = await self.leases.take(channel_id, ttl=t.channel_lease, cap=cap,
                                           margin=t.clock_margin, horizon=CHANNEL_HORIZON)
        if taken is not None:
            self._until[channel_id] = taken.until
            self._users[channel_id] = self._users.get(channel_id, 0) + 1
        return taken

    async def keep(self, channel_id: str) -> bool:
        """Whether this replica may send to the channel now: its lease runs for at least half its length
        (renewed here when it runs for less)."""
        until = self._until.get(channel_id)
        if until is None:
            return False
        if until - self.now() >= self.timing.channel_lease / 2:
            return True
        try:
            renewed = await self.leases.renew(channel_id, self.timing.channel_lease)
        except Exception as exc:  # noqa: BLE001 - without the database the lease cannot be trusted
            log.warning("channel lease not renewed: %s", exc, extra={"channel": channel_id})
            renewed = None
        if renewed is None:
            self._until.pop(channel_id, None)
            return False
        self._until[channel_id] = renewed
        return True

    async def release(self, channel_id: str) -> None:
        """One task is done with the channel; the lease is given up when it was the last."""
        users = self._users.get(channel_id, 0) - 1
        if users > 0:
            self._users[channel_id] = users
            return
        self._users.pop(channel_id, None)
        self._until.pop(channel_id, None)
        try:
            await self.leases.release(channel_id)
        except Exception as exc:  # noqa: BLE001 - it runs out by itself
            log.warning("channel lease not released: %s", exc, extra={"channel": channel_id})

    async def leave(self) -> None:
        self._until.clear()
        self._users.clear()
        await self.replicas.leave()


Pacing = SoloPacing | SharedPacing


class DeliveryWorker:
    def __init__(self, db: Database, sender: Sender, renderer: CardRenderer, settings: DeliverySettings, *,
                 timezone: str = "UTC", metrics: Metrics | None = None, clock: Clock = SYSTEM_CLOCK,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 retry: RetryPolicy | None = None, rng: random.Random | None = None,
                 channel_windows: Sequence[tuple[int, float]] = CHANNEL_WINDOWS,
                 app_windows: Sequence[tuple[int, float]] = APP_WINDOWS, pacing: Pacing | None = None,
                 tick: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.db = db
        self.sender = sender
        self.renderer = renderer
        self.settings = settings
        self.tz = ZoneInfo(timezone)
        self.metrics = metrics or Metrics()
        self.now = clock.time
        self.monotonic = clock.monotonic
        self.sleep = sleep  # waits for the limiter (tests advance a fake clock with it)
        self.tick = tick  # a send's own time passing, for the keeper of its channel's lease
        self.retry = retry or RetryPolicy(base=2.0, cap=600.0, max_attempts=0,
                                          max_elapsed=settings.max_age_hours * 3600)
        self.rng = rng or random.Random()
        self.outbox = Outbox(db, clock)
        self.channels = Channels(db, clock)
        self.audit = AuditLog(db, clock)
        self.store = Store(db, clock)
        self._channel_windows = tuple(channel_windows)
        self._limiters: dict[str, WindowLimiter] = {}
        self.pacing: Pacing = pacing or SoloPacing()
        self._app_windows = tuple(app_windows)
        self._app_limiter = WindowLimiter(self.pacing.app_windows(app_windows), clock.monotonic)
        self._wake = asyncio.Event()
        self._active: dict[str, asyncio.Task[int]] = {}
        self._slots = asyncio.Semaphore(max(1, settings.workers))
        self._quiet = parse_span("delivery.quiet_hours", settings.quiet_hours) if settings.quiet_hours else None
        self._batch = [parse_span("delivery.batch_windows", w) for w in settings.batch_windows]

    # ------------------------------------------------------------------ loop

    def wake(self) -> None:
        self._wake.set()

    async def run(self, idle: float = 5.0) -> None:
        """Deliver until cancelled; sleeps until woken (new work) or the next retry is due."""
        if not self.pacing.shared:  # the only worker: whatever is still claimed was claimed before a restart
            try:
                async with self.store.unit() as u:
                    released = await u.outbox.release_all_leases()
                    if released:
                        await u.audit.add("delivery", "recovered after restart", "retry", count=released)
            except Exception:  # noqa: BLE001 - those claims then run out by themselves (release_expired_leases)
                log.exception("releasing the claims of before the restart failed")
        while True:
            settled, due = 0, None
            try:  # the worker must outlive any single failure (a lost database connection, a full disk)
                settled = await self.run_once()
                due = await self.outbox.next_due_at()
            except Exception:  # noqa: BLE001
                log.exception("delivery cycle failed")
            if due is None or (due <= self.now() and not settled):
                timeout = idle  # nothing due, or all of it held (quiet hours): look again in a while
            else:
                timeout = max(0.05, min(idle, due - self.now()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Deliver everything due now, channels in parallel; returns deliveries settled."""
        async with self.store.unit() as u:
            released = await u.outbox.release_expired_leases()
            if released:
                await u.audit.add("delivery", "lease expired", "retry", count=released)
        channels = await self.outbox.due_channels()
        tasks = [asyncio.ensure_future(self._channel(ch, len(channels))) for ch in channels if ch not in self._active]
        for ch, task in zip([c for c in channels if c not in self._active], tasks, strict=True):
            self._active[ch] = task
        try:
            return sum(await asyncio.gather(*tasks))
        finally:
            for ch in channels:
                if ch in self._active and self._active[ch].done():
                    del self._active[ch]

    def _in_span(self, span: tuple[tuple[int, int], tuple[int, int]], at: float | None = None) -> bool:
        local = datetime.fromtimestamp(self.now() if at is None else at, self.tz)
        minutes = local.hour * 60 + local.minute
        (h1, m1), (h2, m2) = span
        start, end = h1 * 60 + m1, h2 * 60 + m2
        return start <= minutes < end if start <= end else (minutes >= start or minutes < end)

    def in_quiet_hours(self, channel: ChannelRef | None = None) -> bool:
        """Global quiet hours, or the channel's own (which replace the global ones for that channel)."""
        if channel is not None and channel.quiet_hours:
            return self._in_span(parse_span("quiet", channel.quiet_hours))
        return self._quiet is not None and self._in_span(self._quiet)

    def in_batch_window(self) -> bool:
        return any(self._in_span(w) for w in self._batch)

    # ------------------------------------------------------------------ one channel

    async def _channel(self, channel_id: str, due: int) -> int:
        async with self._slots:
            taken = await self.pacing.take(channel_id, due)
            if taken is None:
                return 0  # another replica delivers there now
            self._seed(channel_id, taken)
            try:
                return await self._channel_work(channel_id)
            finally:
                await self.pacing.release(channel_id)

    async def _channel_work(self, channel_id: str) -> int:
        settled = 0
        while True:
            channel = await self.channels.get(channel_id)
            if channel is None or not channel.active or channel.paused or self.in_quiet_hours(channel):
                return settled
            if self.in_batch_window():
                await self.outbox.defer_new(channel_id, self._batch_end())
            work = await self.outbox.claim(channel_id, lease=self.settings.lease_seconds,
                                           digest_threshold=self.settings.digest_threshold)
            if not work:
                return settled
            settled += len(work)
            if not await self._deliver(channel, work):
                return settled

    def _batch_end(self) -> float:
        """First minute after now that lies outside every batch window (at most a day ahead)."""
        t = self.now()
        for _ in range(24 * 60):
            t += 60
            if not any(self._in_span(w, t) for w in self._batch):
                break
        return t

    def _seed(self, channel_id: str, taken: Taken) -> None:
        """A channel's lease just taken: its sends of the last hour, by any replica, fill its windows. Taken
        over from a replica that stopped renewing, one more counts as made now: the message that replica
        may have had on its way when it died is in no table."""
        if taken.joined:
            return
        sent = list(taken.sent) + ([self.now()] if taken.from_other else [])
        offset = self.monotonic() - self.now()
        self._limiter(channel_id).seed([t + offset for t in sent], replace=True)

    def _limiter(self, channel_id: str) -> WindowLimiter:
        lim = self._limiters.get(channel_id)
        if lim is None:
            lim = self._limiters[channel_id] = WindowLimiter(self._channel_windows, self.monotonic)
        return lim

    @contextlib.asynccontextmanager
    async def _paced(self, channel_id: str, *, leased: bool = True) -> AsyncIterator[bool]:
        """Wait until the channel's and the app's windows admit one more message, then yield True for the
        message to be sent inside the block; the message counts in the windows from the moment the block
        ends (its answer), as Teams counts it somewhere between. Yields False when this replica no longer
        holds the channel's lease (another replica delivers there now): nothing may be sent."""
        both = MultiLimiter(self._limiter(channel_id), self._app_limiter)
        while True:
            if leased and not await self.pacing.keep(channel_id):
                yield False
                return
            windows = self.pacing.app_windows(self._app_windows)
            if windows != self._app_limiter.windows:
                self._app_limiter.set_windows(windows)
            wait = both.try_acquire()
            if wait <= 0:
                break
            await self.sleep(min(wait, self.pacing.max_sleep))
        admitted = both.admitted
        # a send that takes long (Teams answering slowly) keeps the channel's lease meanwhile, so no other
        # replica takes the channel over, and its claim, while the message is on its way
        keeper = asyncio.create_task(self._keep_leased(channel_id)) if leased and self.pacing.shared else None
        try:
            yield True
        finally:
            both.done(admitted)
            if keeper is not None:
                keeper.cancel()

    async def _keep_leased(self, channel_id: str) -> None:
        while True:
            await self.tick(self.pacing.max_sleep)  # (the send's time, not the limiter's)
            if not await self.pacing.keep(channel_id):
                return

    async def _deliver(self, channel: ChannelRef, work: list[Delivery]) -> bool:
        """Send one unit (a single card or a digest). False when the channel should not be tried further now."""
        first = work[0]
        digest = len(work) > 1
        posted = None if digest else await self.outbox.card_for(first.record_id, channel.channel_id)
        if not digest and first.event_type is EventType.RESOLVED and posted is None:
            async with self.store.unit() as u:
                await u.outbox.settle([first.id], DeliveryStatus.SKIPPED, error="no card to update")
                await self._audit(u, first, "skipped", op="none", problem="resolved without a posted card")
            return True
        card, text = self.renderer.render_digest(work) if digest else await self.renderer.render_record(first)
        op = "digest" if digest else ("update" if posted else "post")
        started = self.monotonic()
        failure: SendError | None = None
        new_posted = posted
        async with self._paced(channel.channel_id) as admitted:
            if admitted:
                started = self.monotonic()
                try:
                    if posted is not None:
                        await self.sender.update(channel, posted, card, text)
                    else:
                        new_posted = await self.sender.post(channel, card, text)
                except SendError as err:
                    failure = err
        if not admitted:
            await self._hand_back(work)
            return False
        if failure is None and posted is not None and self.settings.reply_in_thread:
            # (the reply goes out even if the lease has just run out: the card is already updated)
            async with self._paced(channel.channel_id, leased=False):
                try:
                    await self.sender.reply(channel, posted, self.renderer.render_reply(first))
                except SendError as err:
                    failure = err
        if failure is not None:
            return await self._failed(channel, work, failure, op, self.monotonic() - started)
        latency = self.monotonic() - started
        assert new_posted is not None  # posted, or updated in place
        async with self.store.unit() as u:
            if digest:
                await u.outbox.settle([d.id for d in work], DeliveryStatus.DIGESTED, http_status=200,
                                         digest_id=first.id)
            else:
                await u.outbox.save_card(first.record_id, channel.channel_id, new_posted)
                await u.outbox.settle([first.id], DeliveryStatus.SENT, http_status=200)
            await self._audit(u, first, "ok", op=op, status=200, latency=round(latency, 4),
                              items=len(work), activity=new_posted.activity_id)
        outcome = "digested" if digest else "sent"
        now = self.now()
        for d in work:  # from the poll that found the change to its card
            self.metrics.observe_value("notifier_record_to_card_seconds", max(0.0, now - d.created_at))
        self.metrics.inc("notifier_deliveries_total", len(work), "Deliveries settled, by outcome", outcome=outcome)
        self.metrics.inc("notifier_delivery_messages_total", 1, "Messages posted or updated in Teams", op=op)
        if first.attempts > 1:
            self.metrics.inc("notifier_delivery_eventual_success_total", 1, "Sent after at least one failed attempt")
        return True

    async def _hand_back(self, work: list[Delivery]) -> None:
        """Claimed work not sent because the channel's lease was lost: pending again, at once."""
        async with self.store.unit() as u:
            await u.outbox.settle([d.id for d in work], DeliveryStatus.PENDING, error="channel lease lost")

    async def _failed(self, channel: ChannelRef, work: list[Delivery], err: SendError, op: str,
                      latency: float) -> bool:
        outcome = classify(err)
        first = work[0]
        ids = [d.id for d in work]
        if first.attempts == 1:
            self.metrics.inc("notifier_delivery_first_attempt_failures_total", 1, "Deliveries whose first try failed")
        if err.status == 429:
            self.metrics.inc("notifier_teams_throttled_total", 1, "429 answers received from Teams")
            lim = self._limiters.get(channel.channel_id)
            if lim is not None:
                lim.penalise(err.retry_after or 1.0)
        detail = dict(op=op, status=err.status, code=err.code, error=str(err)[:200], latency=round(latency, 4),
                      items=len(work))
        async with self.store.unit() as u:
            if err.status == 429 and (err.retry_after or 0.0) > LONG_WAIT:  # held in the store, for every
                # replica, not waited out in a delivery round, which would hold up every other channel's cards
                await u.channels.hold(channel.channel_id, self.now() + float(err.retry_after or 0.0))
            if outcome is Outcome.RETRY:
                delay = self.retry.delay(first.attempts, retry_after=err.retry_after, rng=self.rng)
                age = self.now() - min(d.created_at for d in work)
                if age + delay > self.settings.max_age_hours * 3600:
                    await u.outbox.settle(ids, DeliveryStatus.DEAD, http_status=err.status, code=err.code,
                                             error=str(err)[:500])
                    await self._audit(u, first, "dead", **detail)
                    self.metrics.inc("notifier_deliveries_total", len(work), outcome="dead")
                else:
                    await u.outbox.settle(ids, DeliveryStatus.PENDING, http_status=err.status,
                                             code=err.code, error=str(err)[:500], next_at=self.now() + delay)
                    await self._audit(u, first, "retry", retry_in=round(delay, 3), **detail)
                    self.metrics.inc("notifier_delivery_retries_total", 1, "Delivery attempts to be retried")
                return False  # let this channel cool down; other channels go on
            if outcome is Outcome.CARD_GONE:
                await u.outbox.forget_card(first.record_id, channel.channel_id)
                await u.outbox.settle(ids, DeliveryStatus.PENDING, http_status=err.status, code=err.code,
                                         error="card gone; posting a fresh one")
                await self._audit(u, first, "retry", **detail)
                return True
            if outcome is Outcome.GONE:
                # keep the work pending: it is delivered if the app is installed there again
                await u.outbox.settle(ids, DeliveryStatus.PENDING, http_status=err.status, code=err.code,
                                         error=str(err)[:500])
                await u.channels.set_active(channel.channel_id, False, err.code or f"HTTP {err.status}")
                await self._audit(u, first, "failed", deactivated=True, **detail)
                log.warning("channel deactivated: %s", err.code, extra={"channel": channel.channel_id})
                return False
            await u.outbox.settle(ids, DeliveryStatus.FAILED, http_status=err.status, code=err.code,
                                     error=str(err)[:500])
            await self._audit(u, first, "failed", **detail)
            self.metrics.inc("notifier_deliveries_total", len(work), outcome="failed")
            return True

    async def send_card(self, channel_id: str, card: dict[str, Any], text: str, *, what: str) -> bool:
        """Post one card outside the outbox (a reminder), under the same pacing; audited as delivery `what`.

        False when it was not sent: the conversation is unknown, inactive, paused or in quiet hours, or
        Teams refused it (403/404 "gone" deactivates the conversation, as for outbox deliveries).
        """
        return await self._one_off(channel_id, what, lambda ch: self.sender.post(ch, card, text))

    async def update_card(self, channel_id: str, posted: PostedCard, card: dict[str, Any], text: str, *,
                          what: str) -> bool:
        """Update one posted card outside the outbox (who is on it), like send_card."""
        async def update(channel: ChannelRef) -> PostedCard:
            await self.sender.update(channel, posted, card, text)
            return posted
        return await self._one_off(channel_id, what, update)

    async def _one_off(self, channel_id: str, what: str,
                       call: Callable[[ChannelRef], Awaitable[PostedCard]]) -> bool:
        channel = await self.channels.get(channel_id)
        if channel is None or not channel.active or channel.paused or self.in_quiet_hours(channel):
            return False
        failure: SendError | None = None
        async with self._one_off_lease(channel_id) as leased, self._paced(channel_id, leased=leased) as admitted:
            if not admitted:
                return False
            try:
                posted = await call(channel)
            except SendError as err:
                failure = err
        if failure is not None:
            gone = classify(failure) is Outcome.GONE
            async with self.store.unit() as u:
                if gone:
                    await u.channels.set_active(channel_id, False, failure.code or f"HTTP {failure.status}")
                await u.audit.add("delivery", what, "failed", channel_id=channel_id, status=failure.status,
                                  code=failure.code, deactivated=gone)
            return False
        await self.audit.record("delivery", what, "ok", channel_id=channel_id, status=200,
                                activity=posted.activity_id)
        self.metrics.inc("notifier_delivery_messages_total", 1, "Messages posted or updated in Teams", op=what)
        return True

    @contextlib.asynccontextmanager
    async def _one_off_lease(self, channel_id: str) -> AsyncIterator[bool]:
        """A message outside the outbox (a reminder, a card refreshed) is sent under the channel's lease
        too: shared with this replica's own delivery there, else taken for it (waiting up to two lease
        lengths for another replica to finish). Yields whether it is held; when it could not be taken the
        message goes under this replica's own pacing only. Either way the lease is given back only by the
        last of this replica's tasks using it."""
        taken = await self.pacing.take(channel_id, None)
        if isinstance(self.pacing, SharedPacing):
            deadline = self.now() + 2 * self.pacing.timing.channel_lease
            while taken is None and self.now() < deadline:
                await self.sleep(self.pacing.timing.heartbeat_every)
                taken = await self.pacing.take(channel_id, None)
        if taken is None:
            yield False
            return
        self._seed(channel_id, taken)
        try:
            yield True
        finally:
            await self.pacing.release(channel_id)

    async def _audit(self, u: Unit, d: Delivery, outcome: str, **detail: Any) -> None:
        await u.audit.add("delivery", f"{d.event_type.value} {detail.pop('op', 'send')}", outcome,
                          channel_id=d.channel_id, company=d.record.company, record_id=d.record_id,
                          delivery_id=d.id, attempt=d.attempts, event=d.event_type.value,
                          **{k: v for k, v in detail.items() if v is not None})
