"""Replicas sharing one database: their heartbeats, and which one delivers to which channel.

Teams limits a bot per channel (7/1 s, 8/2 s, 60/30 s, 1800/h) and per app (50/s). A channel is
delivered by one replica at a time, the holder of its lease (table channel_leases), so one limiter keeps
its windows; a replica taking a channel over counts the channel's sends of the last hour first
(`deliveries.sent_at`), so a hand-over never lets more through than the windows allow. The app's limit
is shared among the live replicas (table replicas: a heartbeat each).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.clock import SYSTEM_CLOCK, Clock
from store.db import Database


@dataclass(frozen=True, slots=True)
class Taken:
    """A channel's lease, now held: until when, and the channel's sends (unix times) within the horizon."""

    until: float
    sent: list[float]
    from_other: bool  # taken over from another replica whose lease had run out
    joined: bool = False  # held already by this replica (another task of it): its limiter is current


class Replicas:
    """This replica's heartbeat, and how many replicas are alive."""

    def __init__(self, db: Database, replica: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self.replica = replica
        self._now = clock.time

    async def beat(self, expiry: float) -> int:
        """Say this replica is alive; returns how many replicas were heard of within `expiry` seconds
        (this one included). Rows silent for ten times that are removed."""
        now = self._now()  # (statements of their own: a heartbeat never waits for a poll's page writes)
        await self._db.write_now("INSERT INTO replicas (replica, started_at, seen_at) VALUES (?, ?, ?)"
                                 " ON CONFLICT (replica) DO UPDATE SET seen_at = excluded.seen_at",
                                 (self.replica, now, now))
        await self._db.write_now("DELETE FROM replicas WHERE seen_at < ?", (now - 10 * expiry,))
        return int(await self._db.scalar("SELECT count(*) FROM replicas WHERE seen_at >= ?", (now - expiry,)) or 1)

    async def live(self, expiry: float) -> list[str]:
        rows = await self._db.fetchall("SELECT replica FROM replicas WHERE seen_at >= ? ORDER BY replica",
                                       (self._now() - expiry,))
        return [str(r[0]) for r in rows]

    async def leave(self) -> None:
        """A clean stop: this replica's heartbeat and channel leases go at once, and what it had claimed in
        its channels (a send cut short by the stop) is pending again: only it could claim there."""
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE deliveries SET status = 'pending', lease_until = NULL WHERE status = 'sending'"
                               " AND channel_id IN (SELECT channel_id FROM channel_leases WHERE owner = ?)",
                               (self.replica,))
            await conn.execute("DELETE FROM channel_leases WHERE owner = ?", (self.replica,))
            await conn.execute("DELETE FROM replicas WHERE replica = ?", (self.replica,))


class ChannelLeases:
    """Which replica delivers to which channel."""

    def __init__(self, db: Database, replica: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self.replica = replica
        self._now = clock.time

    async def take(self, channel_id: str, *, ttl: float, cap: int, margin: float, horizon: float) -> Taken | None:
        """Hold the channel's lease for `ttl` seconds, unless another replica's lease is still running (or
        ended less than `margin` ago), or this replica already holds `cap` other channels.

        Taken over from a replica whose lease ran out, the channel's claimed deliveries go back to pending:
        that replica stopped delivering there when its lease ended (it sends only under a running lease).
        """
        now = self._now()
        until = now + ttl
        async with self._db.transaction() as conn:
            async with conn.execute("SELECT owner, until FROM channel_leases WHERE channel_id = ?",
                                    (channel_id,)) as cur:
                row = await cur.fetchone()
            previous = None if row is None else (str(row[0]), float(row[1]))
            if previous is not None and previous[0] != self.replica and previous[1] + margin > now:
                return None
            if previous is None or previous[0] != self.replica:
                async with conn.execute("SELECT count(*) FROM channel_leases WHERE owner = ? AND until > ?",
                                        (self.replica, now)) as cur:
                    held = await cur.fetchone()
                if held is not None and int(held[0]) >= cap:
                    return None
            async with conn.execute(
                    "INSERT INTO channel_leases (channel_id, owner, until) VALUES (?, ?, ?) ON CONFLICT (channel_id)"
                    " DO UPDATE SET owner = excluded.owner, until = excluded.until"
                    " WHERE channel_leases.owner = excluded.owner OR channel_leases.until < ? RETURNING owner",
                    (channel_id, self.replica, until, now - margin)) as cur:
                got = await cur.fetchall()
            if not got:
                return None  # another replica took it a moment ago
            from_other = previous is not None and previous[0] != self.replica
            if from_other:
                await conn.execute("UPDATE deliveries SET status = 'pending', lease_until = NULL"
                                   " WHERE channel_id = ? AND status = 'sending'", (channel_id,))
        rows = await self._db.fetchall(
            "SELECT sent_at FROM deliveries WHERE channel_id = ? AND sent_at >= ?"
            " AND (status = 'sent' OR (status = 'digested' AND id = digest_id)) ORDER BY sent_at",
            (channel_id, now - horizon))
        return Taken(until, [float(r[0]) for r in rows], from_other)

    async def renew(self, channel_id: str, ttl: float) -> float | None:
        """Extend this replica's lease; None when it is no longer this replica's."""
        until = self._now() + ttl  # one statement of its own: a renewal never waits for this process's other writes
        changed = await self._db.write_now("UPDATE channel_leases SET until = ? WHERE channel_id = ? AND owner = ?",
                                           (until, channel_id, self.replica))
        return until if changed == 1 else None

    async def release(self, channel_id: str) -> None:
        """Give the channel up. Anything still claimed there is pending again (nothing, when the work ended
        normally; a send cut short when it was cancelled): only the lease holder claims in its channel."""
        async with self._db.transaction() as conn:
            cur = await conn.execute("DELETE FROM channel_leases WHERE channel_id = ? AND owner = ?",
                                     (channel_id, self.replica))
            if cur.rowcount:
                await conn.execute("UPDATE deliveries SET status = 'pending', lease_until = NULL"
                                   " WHERE channel_id = ? AND status = 'sending'", (channel_id,))

    async def held(self) -> dict[str, str]:
        """Every running lease: channel -> owner."""
        rows = await self._db.fetchall("SELECT channel_id, owner FROM channel_leases WHERE until >= ?",
                                       (self._now(),))
        return {str(r[0]): str(r[1]) for r in rows}
