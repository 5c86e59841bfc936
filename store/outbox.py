"""Events' deliveries to channels (the outbox) and the cards posted for them: queue, claim, settle, replay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import Binding, EventType, FinanceRecord, PostedCard
from store.db import Connection, Database
from store.records import load_record

# one delivery of an event to a conversation, unless it is queued already (the idempotency key)
QUEUE_DELIVERY = ("INSERT INTO deliveries (event_id, channel_id, record_id, event_type, next_at, created_at)"
                  " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed under a lease
    SENT = "sent"
    DIGESTED = "digested"  # delivered as a row of a digest card
    FAILED = "failed"  # permanent error; replayable
    DEAD = "dead"  # retriable error past the maximum age; replayable
    SUPERSEDED = "superseded"  # a later event for the same record and channel carries the news
    SKIPPED = "skipped"  # nothing to show (e.g. resolved, but no card was ever posted there)


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    event_id: int
    channel_id: str
    record_id: str
    event_type: EventType
    status: DeliveryStatus
    attempts: int
    created_at: float
    record: FinanceRecord
    previous_state: str | None


class Outbox:
    """Events and their deliveries; the poller writes, the delivery worker claims and settles."""

    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._now = clock.time

    async def backfill(self, conn: Connection, channel_id: str, items: Iterable[tuple[int, FinanceRecord]],
                       binding: Binding) -> int:
        """Queue what is already pending for a newly linked channel (events the poller made earlier)."""
        now = self._now()
        rows = [(eid, channel_id, rec.record_id, EventType.NEW.value, now, now)
                for eid, rec in items if binding.matches(rec)]
        if not rows:
            return 0
        cur = await conn.executemany(QUEUE_DELIVERY, rows)
        return max(cur.rowcount, 0)  # deliveries that already existed are not queued again

    async def release_all_leases(self, conn: Connection) -> int:
        """At start-up. On SQLite, whose database has this one worker: whatever is still 'sending' was claimed
        by a process that died. On PostgreSQL another replica may be sending right now: only expired leases go."""
        if self._db.dialect != "sqlite":
            return await self.release_expired_leases(conn)
        cur = await conn.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'sending'")
        return cur.rowcount

    async def release_expired_leases(self, conn: Connection) -> int:
        cur = await conn.execute(
            "UPDATE deliveries SET status = 'pending' WHERE status = 'sending' AND lease_until < ?", (self._now(),))
        return cur.rowcount

    async def due_channels(self, limit: int = 1000) -> list[str]:
        rows = await self._db.fetchall(
            "SELECT DISTINCT d.channel_id FROM deliveries d JOIN channels c USING (channel_id)"
            " WHERE d.status = 'pending' AND d.next_at <= ? AND c.active = 1 AND c.paused = 0"
            " AND (c.held_until IS NULL OR c.held_until <= ?) LIMIT ?",
            (now := self._now(), now, limit))
        return [r[0] for r in rows]

    async def next_due_at(self) -> float | None:
        v = await self._db.scalar(
            "SELECT min(CASE WHEN c.held_until > d.next_at THEN c.held_until ELSE d.next_at END)"
            " FROM deliveries d JOIN channels c USING (channel_id)"
            " WHERE d.status = 'pending' AND c.active = 1 AND c.paused = 0")
        return None if v is None else float(v)

    async def defer_new(self, channel_id: str, until: float) -> int:
        """Hold a channel's new items until `until` (a batch window's end); they leave together as a digest."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE deliveries SET next_at = ?, last_code = 'batched' WHERE channel_id = ? AND status = 'pending'"
                " AND event_type = 'new' AND next_at < ?", (until, channel_id, until))
            return cur.rowcount

    async def claim(self, channel_id: str, *, lease: float, digest_threshold: int) -> list[Delivery]:
        """Claim the next unit of work for one channel, atomically.

        Older pending deliveries of a record are superseded by its newest one. When more than
        `digest_threshold` `new` deliveries wait (or items held by a batch window are due), all of them
        are claimed for one digest; otherwise the oldest single delivery is claimed.
        """
        now = self._now()
        # On PostgreSQL, replicas claim side by side: the rows picked are locked, rows another replica has
        # locked are skipped (so no statement here waits for another replica: no deadlock), and each UPDATE
        # takes only rows still pending once it has them.
        lock = " FOR UPDATE SKIP LOCKED" if self._db.dialect == "postgresql" else ""
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE deliveries SET status = 'superseded' WHERE id IN (SELECT id FROM deliveries"
                " WHERE channel_id = ? AND status = 'pending' AND id NOT IN (SELECT max(id) FROM deliveries"
                f" WHERE channel_id = ? AND status = 'pending' GROUP BY record_id){lock}) AND status = 'pending'",
                (channel_id, channel_id))
            async with conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE last_code = 'batched') FROM deliveries"
                    " WHERE channel_id = ? AND status = 'pending' AND next_at <= ? AND event_type = 'new'",
                    (channel_id, now)) as cur:
                new_count, batched = await cur.fetchone() or (0, None)  # (an aggregate: always one row)
            if new_count > digest_threshold or (batched and new_count > 1):
                sql = ("UPDATE deliveries SET status = 'sending', lease_until = ?, attempts = attempts + 1"
                       " WHERE id IN (SELECT id FROM deliveries WHERE channel_id = ? AND status = 'pending'"
                       f" AND next_at <= ? AND event_type = 'new'{lock}) AND status = 'pending' RETURNING id")
                params: tuple[Any, ...] = (now + lease, channel_id, now)
            else:
                sql = ("UPDATE deliveries SET status = 'sending', lease_until = ?, attempts = attempts + 1"
                       " WHERE id = (SELECT id FROM deliveries WHERE channel_id = ? AND status = 'pending'"
                       f" AND next_at <= ? ORDER BY id LIMIT 1{lock}) AND status = 'pending' RETURNING id")
                params = (now + lease, channel_id, now)
            async with conn.execute(sql, params) as cur:
                ids = [r[0] for r in await cur.fetchall()]
        return await self._load(ids)

    async def _load(self, ids: list[int]) -> list[Delivery]:
        if not ids:
            return []
        out: list[Delivery] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._db.fetchall(
                "SELECT d.*, e.record, e.previous_state FROM deliveries d JOIN events e ON e.id = d.event_id"
                f" WHERE d.id IN ({marks}) ORDER BY d.id", tuple(chunk))
            out.extend(_delivery(r) for r in rows)
        return out

    async def get(self, delivery_id: int) -> Delivery | None:
        found = await self._load([delivery_id])
        return found[0] if found else None

    async def settle(self, conn: Connection, ids: Sequence[int], status: DeliveryStatus, *,
                     http_status: int | None = None, code: str | None = None, error: str | None = None,
                     next_at: float | None = None, digest_id: int | None = None) -> None:
        """Record how a claimed delivery ended. A delivery already sent (or digested) stays so: a replica that
        lost the channel's lease while another sent it must not make it pending again."""
        now = self._now()
        await conn.executemany(
            "UPDATE deliveries SET status = ?, lease_until = NULL, last_status = ?, last_code = ?, last_error = ?,"
            " next_at = coalesce(?, next_at), sent_at = CASE WHEN ? IN ('sent', 'digested') THEN ? ELSE sent_at END,"
            " digest_id = coalesce(?, digest_id) WHERE id = ? AND status NOT IN ('sent', 'digested')",
            [(status.value, http_status, code, error, next_at, status.value, now, digest_id, i) for i in ids])

    async def cards_in(self, channel_id: str) -> list[tuple[str, str]]:
        """(record id, activity id) of every card posted in a channel."""
        rows = await self._db.fetchall("SELECT record_id, activity_id FROM cards WHERE channel_id = ?", (channel_id,))
        return [(r[0], r[1]) for r in rows]

    async def card_for(self, record_id: str, channel_id: str) -> PostedCard | None:
        row = await self._db.fetchone("SELECT conversation_id, activity_id FROM cards WHERE record_id = ?"
                                      " AND channel_id = ?", (record_id, channel_id))
        return PostedCard(row[0], row[1]) if row else None

    async def save_card(self, conn: Connection, record_id: str, channel_id: str, card: PostedCard) -> None:
        await conn.execute(
            "INSERT INTO cards (record_id, channel_id, conversation_id, activity_id, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (record_id, channel_id) DO UPDATE SET conversation_id = excluded.conversation_id,"
            " activity_id = excluded.activity_id, updated_at = excluded.updated_at",
            (record_id, channel_id, card.conversation_id, card.activity_id, self._now()))

    async def forget_card(self, conn: Connection, record_id: str, channel_id: str) -> None:
        await conn.execute("DELETE FROM cards WHERE record_id = ? AND channel_id = ?", (record_id, channel_id))

    async def replay(self, *, delivery_id: int | None = None, channel_id: str | None = None) -> list[int]:
        """Re-queue failed or dead deliveries (one by id, or all of a channel, or all)."""
        where = ["status IN ('failed', 'dead')"]
        params: list[Any] = []
        if delivery_id is not None:
            where.append("id = ?")
            params.append(delivery_id)
        if channel_id is not None:
            where.append("channel_id = ?")
            params.append(channel_id)
        async with self._db.transaction() as conn:
            async with conn.execute(
                    "UPDATE deliveries SET status = 'pending', next_at = ?, attempts = 0, created_at = ?"
                    " WHERE " + " AND ".join(where) + " RETURNING id", (self._now(), self._now(), *params)) as cur:
                return sorted(r[0] for r in await cur.fetchall())

    async def counts(self, channel_id: str | None = None) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM deliveries"
        params: tuple[Any, ...] = ()
        if channel_id is not None:
            sql += " WHERE channel_id = ?"
            params = (channel_id,)
        rows = await self._db.fetchall(sql + " GROUP BY status", params)
        return {r[0]: r[1] for r in rows}

    async def sent_for_source(self, kind: str, company: str) -> int:
        """Deliveries of one source's records that reached their channel (as a card or a digest's row)."""
        return int(await self._db.scalar(
            "SELECT count(*) FROM deliveries WHERE status IN ('sent', 'digested') AND record_id LIKE ?",
            (f"{kind}:{company}:%",)) or 0)

    async def oldest_pending_age(self) -> float:
        v = await self._db.scalar("SELECT min(created_at) FROM deliveries WHERE status IN ('pending', 'sending')")
        return 0.0 if v is None else max(0.0, self._now() - float(v))


def _delivery(r: Any) -> Delivery:
    return Delivery(id=r["id"], event_id=r["event_id"], channel_id=r["channel_id"], record_id=r["record_id"],
                    event_type=EventType(r["event_type"]), status=DeliveryStatus(r["status"]),
                    attempts=r["attempts"], created_at=r["created_at"],
                    record=load_record(r["record"]), previous_state=r["previous_state"])
