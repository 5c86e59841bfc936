"""Which replica runs the scheduler (polls, reminders, daily upkeep): exactly one at a time.

PostgreSQL: the leader holds a session advisory lock (`pg_try_advisory_lock(LEADER_KEY)`) on a connection
of its own, outside the pool. The lock lives exactly as long as that session: when the leader's process
dies its socket closes and the server releases the lock at once; when its host or network dies, the
server's TCP keepalives end the session within `Timing.server_gone`. Followers try for the lock every
`Timing.retry`. The leader checks its session every `Timing.check_every` with a query that must answer
within `Timing.check_timeout`; any error or timeout means leadership lost: the scheduler is stopped and
its polls cancelled at once, before anything else.

Fencing. A replica that takes the lock waits `Timing.grace` before it polls: longer than the old leader
needs to notice that its session is gone (one check interval plus one check timeout), so the old
leader has stopped its polls before the new one starts. A poll's writes go through (pollers.job
FencedWriter) only while `current()`: the last successful check was asked less than `Timing.fence` ago,
which is shorter than the grace, so a leader frozen for longer (a stopped VM, a debugger) writes nothing
after it resumes until a check says the lock is still its own. Each takeover increments
`leadership.epoch` (the audit trail names it with the replica). The database does not compare epochs
in the write transaction: a write already on its way when the leader froze could still land; the
worst it does is an event made twice (an extra card), never a lost one.

SQLite: one process polls. The leader holds an exclusive lock (flock) on `<database>.leader`; a
second `serve` on the same file waits for it, serving /api/messages but neither polling nor delivering.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from core.clock import SYSTEM_CLOCK, Clock
from core.errors import NotifierError
from store.db import Database
from store.pg import redact

log = logging.getLogger(__name__)

LEADER_KEY = 0x4E4F5449  # "NOTI": the advisory lock key of the scheduler, the same in every replica
SCOPE = "scheduler"  # the row of table leadership
POLL_SOON = "poll soon"  # its row counting the polls asked for by any replica

class LeadershipLost(NotifierError):
    """A poll's write refused: this process does not hold the lead as of now. On PostgreSQL the leader
    counts its lead as current only while its last successful check of the lock session is recent
    (Timing.fence, shorter than the grace a new leader waits): a leader that was frozen (a paused VM)
    and resumes after another replica took over writes nothing more before it has checked again."""


Gained = Callable[[int], Awaitable[None]]  # called with the new epoch
Lost = Callable[[str], Awaitable[None]]  # called with the reason


def replica_id(name: str = "") -> str:
    """The configured service.replica_name, or host:pid."""
    return name or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Timing:
    """Every interval of leadership and of the replicas' coordination, derived from one bound: the time
    within which a replica takes over from a dead leader (service.leader_takeover_seconds)."""

    takeover: float

    @property
    def retry(self) -> float:
        """How often a follower tries for the lock."""
        return self.takeover / 10

    @property
    def check_every(self) -> float:
        """How often the leader checks its lock session."""
        return self.takeover / 10

    @property
    def check_timeout(self) -> float:
        """How long a check (or a connect) may take before the leader counts its session as gone."""
        return self.takeover / 10

    @property
    def grace(self) -> float:
        """A new leader's wait before it polls: a previous leader notices its loss within check_every +
        check_timeout (and stops its polls at once)."""
        return self.check_every + self.check_timeout + self.takeover / 20

    @property
    def fence(self) -> float:
        """The leader's writes go through only this long after its last successful check (less than the grace,
        more than a check interval plus a slow check)."""
        return self.check_every + self.check_timeout + self.takeover / 40

    @property
    def keepalive(self) -> tuple[int, int, int]:
        """Server-side TCP keepalive of the lock session (idle, interval, count), whole seconds: a leader
        whose host or network died loses the lock within about server_gone seconds."""
        idle, interval = max(1, int(self.takeover / 4)), max(1, int(self.takeover / 20))
        return idle, interval, max(1, min(3, int((0.4 * self.takeover - idle) / interval)))

    @property
    def server_gone(self) -> float:
        idle, interval, count = self.keepalive
        return float(idle + interval * count)

    @property
    def worst_takeover(self) -> float:
        """Leader's host dead: the server ends its session, a follower's next try, the grace."""
        return self.server_gone + self.retry + self.check_timeout + self.grace

    # the replicas' coordination of delivery (store.leases) runs on the same scale
    @property
    def heartbeat_every(self) -> float:
        return self.takeover / 10

    @property
    def replica_expiry(self) -> float:
        """A replica not heard of for this long no longer counts as alive (its share of the app limit)."""
        return self.takeover / 2

    @property
    def channel_lease(self) -> float:
        """A channel's delivery lease, renewed while its replica has work for it."""
        return self.takeover / 3

    @property
    def clock_margin(self) -> float:
        """A lease is taken from another replica only this long after it ended (clocks differ a little)."""
        return min(1.0, self.takeover / 10)


class Leadership(Protocol):
    replica: str

    @property
    def is_leader(self) -> bool: ...

    def current(self) -> bool:
        """Whether a poll of this process may write now (see LeadershipLost)."""

    async def run(self, gained: Gained, lost: Lost) -> None:
        """Take the lead when possible, give it up when it is lost, until cancelled (which releases it)."""

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[bool]:
        """For a one-off poll (`poll --once`): yields whether the lead is this process's for the block
        (already, or taken now and given back after); False while another process holds it."""


async def _bump(db: Database, name: str, replica: str, now: float) -> int:
    """Add one to a counter row of table leadership (its epoch), naming the replica; returns the new value."""
    async with db.transaction() as conn:
        async with conn.execute(
                "INSERT INTO leadership (name, epoch, holder, since) VALUES (?, 1, ?, ?) ON CONFLICT (name)"
                " DO UPDATE SET epoch = leadership.epoch + 1, holder = excluded.holder, since = excluded.since"
                " RETURNING epoch", (name, replica, now)) as cur:
            rows = list(await cur.fetchall())
    return int(rows[0][0])  # an upsert with RETURNING returns its row


async def _bump_epoch(db: Database, replica: str, now: float) -> int:
    return await _bump(db, SCOPE, replica, now)


async def ask_for_poll(db: Database, replica: str, now: float) -> None:
    """Ask the leader, whichever replica it is, to poll soon (`poll now`, a channel linked on another replica):
    a counter in table leadership that the leader watches (PollRequests)."""
    await _bump(db, POLL_SOON, replica, now)


async def polls_asked(db: Database) -> int:
    """How many polls were asked for so far (the counter ask_for_poll increments)."""
    return int(await db.scalar("SELECT epoch FROM leadership WHERE name = ?", (POLL_SOON,)) or 0)


class FileLeadership:
    """SQLite: the leader holds flock(LOCK_EX) on `<database>.leader`; the file names its pid."""

    def __init__(self, db: Database, database_path: str, replica: str, timing: Timing, *,
                 clock: Clock = SYSTEM_CLOCK, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.db = db
        self.database_path = database_path
        self.path = database_path + ".leader"
        self.replica = replica
        self.timing = timing
        self.clock = clock
        self.sleep = sleep
        self._fd: int | None = None
        self._leader = False
        self.holder: str | None = None  # the process holding the lock file when this one could not take it

    @property
    def is_leader(self) -> bool:
        return self._leader

    def current(self) -> bool:
        return True  # a lock file is held as long as the process lives: nobody else polls meanwhile

    def try_lock(self) -> bool:
        """Take the lock file now, or say who holds it (one log line) and return False."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            self.holder = holder
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.replica}\n".encode(), 0)
        self._fd = fd
        return True

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        if self._leader:
            yield True
            return
        if not self.try_lock():
            yield False
            return
        try:
            yield True
        finally:
            self.unlock()

    def unlock(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
        self._leader = False

    async def run(self, gained: Gained, lost: Lost) -> None:
        try:
            if not self.try_lock():
                log.warning("another notifier process (%s) is running on %s and polls and delivers: this one"
                            " stands by, serving /api/messages only, until that one stops (SQLite allows one"
                            " active process; several replicas need PostgreSQL)", self.holder, self.database_path)
                while not self.try_lock():
                    await self.sleep(self.timing.retry)
                log.warning("%s became the active process on %s", self.replica, self.database_path)
            self._leader = True
            while not await self._start(gained, lost):  # (a full disk, "database is locked": in a while)
                await self.sleep(self.timing.retry)
            await asyncio.Event().wait()  # held until cancelled
        finally:
            self.unlock()

    async def _start(self, gained: Gained, lost: Lost) -> bool:
        """The epoch written and `gained` called; on a failure, whatever `gained` started stopped again
        (`lost`) and False: the lock is kept and the start tried again, as nobody else may poll meanwhile."""
        called = False
        try:
            epoch = await _bump_epoch(self.db, self.replica, self.clock.time())
            called = True
            await gained(epoch)
            return True
        except Exception as exc:  # noqa: BLE001 - the task must outlive it: nothing would restart it
            log.warning("%s could not start polling and delivering (tried again in %g s): %s: %s", self.replica,
                        self.timing.retry, type(exc).__name__, exc)
            if called:
                try:
                    await lost(f"the start failed: {type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001
                    log.exception("stopping after a failed start failed")
            return False


class PgLeadership:
    """PostgreSQL: pg_try_advisory_lock on a dedicated asyncpg connection; see the module's docstring."""

    def __init__(self, db: Database, url: str, replica: str, timing: Timing, *, clock: Clock = SYSTEM_CLOCK,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, key: int = LEADER_KEY) -> None:
        self.db = db
        self.url = url
        self.replica = replica
        self.timing = timing
        self.clock = clock
        self.sleep = sleep
        self.key = key
        self._conn: Any = None
        self._leader = False
        self._coordinating = False  # run() was entered: from then on only a checked lead writes
        self._exclusive = False
        self._checked = -math.inf  # monotonic time of the last successful check of the lock session
        self.backend_pid: int | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader

    def current(self) -> bool:
        if self._exclusive or not self._coordinating:  # a one-off poll under the lock; or never coordinating
            return True  # at all (a service started without its background tasks)
        return self._leader and self.clock.monotonic() - self._checked <= self.timing.fence

    async def _connect(self) -> Any:
        t = self.timing
        idle, interval, count = t.keepalive
        conn = await asyncpg.connect(self.url, timeout=max(1.0, t.check_timeout), server_settings={
            "application_name": f"notifier leader {self.replica}"[:63],
            # the server ends this session (and so frees the lock) when the leader's host stops answering
            "tcp_keepalives_idle": str(idle), "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(count), "tcp_user_timeout": str(int(t.server_gone * 1000)),
            "statement_timeout": str(max(1, int(t.check_timeout * 1000))),
            "idle_in_transaction_session_timeout": str(max(1, int(t.check_timeout * 1000)))})
        return conn

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        if self._leader:
            yield True
            return
        conn = await self._connect()
        try:
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
            self._exclusive = got
            yield got
        finally:
            self._exclusive = False
            conn.terminate()  # (the lock, if taken, ends with the session)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # no goodbye round trip: the session (and the lock) ends with the socket

    async def _holds_lock(self) -> bool:
        held = await asyncio.wait_for(self._conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            " AND objid = $1 AND granted", self.key & 0xFFFFFFFF), self.timing.check_timeout)
        return bool(held)

    async def _check(self) -> bool:
        """The lock still held? Counted from when the question was asked: the answer may come late."""
        asked = self.clock.monotonic()
        if not await self._holds_lock():
            return False
        self._checked = asked
        return True

    async def _try_lock(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            await self._close()
            self._conn = await asyncio.wait_for(self._connect(), self.timing.check_timeout * 2)
            self.backend_pid = self._conn.get_server_pid()  # (the session an administrator would end)
        return bool(await asyncio.wait_for(self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key),
                                           self.timing.check_timeout))

    async def run(self, gained: Gained, lost: Lost) -> None:
        t = self.timing
        reported = False
        self._coordinating = True
        try:
            while True:
                try:
                    got = await self._try_lock()
                except Exception as exc:  # noqa: BLE001 - unreachable, a timeout, asyncpg's errors: try again later
                    got = False
                    await self._close()
                    if not reported:
                        log.warning("scheduler lock on %s failed: %s", redact(self.url), exc)
                        reported = True
                if not got:
                    await self.sleep(t.retry)
                    continue
                reported = False
                self._leader = True
                reason, started = await self._lead(gained)
                self._leader = False
                await self._close()
                if started:
                    await lost(reason)
                else:
                    log.warning("scheduler lock given up before starting: %s", reason)
                # the replica that just lost its session is the likely unhealthy one: the others (trying
                # every `retry`) get the first chance at the lock
                await self.sleep(t.grace)
        finally:
            self._leader = False  # (and still coordinating: nothing more of this process's polls may write)
            await self._close()

    async def _lead(self, gained: Gained) -> tuple[str, bool]:
        """Hold the lead: wait out the grace, start the scheduler, check the session until it fails.
        Returns why it ended, and whether `gained` was called."""
        t = self.timing
        started = False
        try:
            waited = 0.0
            while waited < t.grace:
                step = min(t.check_every, t.grace - waited)
                await self.sleep(step)
                waited += step
                if not await self._check():
                    return "the scheduler lock was not held after it was taken", started
            epoch = await _bump_epoch(self.db, self.replica, self.clock.time())
            started = True
            await gained(epoch)
            while True:
                await self.sleep(t.check_every)
                if not await self._check():
                    return "the scheduler lock is no longer held by this replica", started
        except TimeoutError:
            return f"the lock session did not answer within {t.check_timeout:g} s", started
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the lock session ends the lead
            return f"the lock session failed: {type(exc).__name__}: {exc}", started
