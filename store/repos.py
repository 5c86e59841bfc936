"""Repositories: channels, bindings, seen records, events and the delivery outbox, posted cards, audit."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from itertools import repeat
from operator import itemgetter, methodcaller
from typing import Any, NamedTuple

import aiosqlite
import orjson

from core.domain import Binding, ChannelRef, EventType, FinanceRecord, PostedCard, RecordKind, record_id
from store.db import Database

# One change a poll found: (event type, the record in a stored form (FinanceRecord.to_dict's dict, or the
# compact tuple, FinanceRecord.COMPACT), the state before, the approval step now). The stored form is what
# events.record holds, as JSON.
Change = tuple[EventType, dict[str, Any] | tuple[Any, ...], str | None, str]
_COMPACT_AT = {name: i for i, name in enumerate(FinanceRecord.COMPACT)}


def _field(records: list[Any], name: str) -> list[Any]:
    """One field of records in either stored form (None for a field the compact form lacks, approvers)."""
    forms = set(map(type, records))
    if forms <= {dict}:
        return list(map(methodcaller("get", name), records))
    at = _COMPACT_AT.get(name)
    if forms <= {tuple, list}:
        return list(map(itemgetter(at), records)) if at is not None else [None] * len(records)
    return [r.get(name) if type(r) is dict else None if at is None else r[at] for r in records]


def load_record(text: str | bytes) -> FinanceRecord:
    return FinanceRecord.from_dict(orjson.loads(text))


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed under a lease
    SENT = "sent"
    DIGESTED = "digested"  # delivered as a row of a digest card
    FAILED = "failed"  # permanent error; replayable
    DEAD = "dead"  # retriable error past the maximum age; replayable
    SUPERSEDED = "superseded"  # a later event for the same record and channel carries the news
    SKIPPED = "skipped"  # nothing to show (e.g. resolved, but no card was ever posted there)


REPLAYABLE = (DeliveryStatus.FAILED, DeliveryStatus.DEAD)


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


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    category: str
    action: str
    outcome: str
    channel_id: str | None
    company: str | None
    record_id: str | None
    delivery_id: int | None
    actor: str | None
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


# --------------------------------------------------------------------------- audit

class AuditLog:
    def __init__(self, db: Database, now=time.time) -> None:
        self._db = db
        self._now = now

    INSERT = ("INSERT INTO audit (at, category, action, outcome, channel_id, company, record_id, delivery_id,"
              " actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")

    def row(self, category: str, action: str, outcome: str, *, channel_id: str | None = None,
            company: str | None = None, record_id: str | None = None, delivery_id: int | None = None,
            actor: str | None = None, **detail: Any) -> tuple[Any, ...]:
        """The parameters of one audit INSERT, stamped now."""
        return (self._now(), category, action, outcome, channel_id, company, record_id, delivery_id, actor,
                json.dumps(detail, default=str, separators=(",", ":")) if detail else None)

    async def add(self, conn: aiosqlite.Connection, category: str, action: str, outcome: str, **kwargs: Any) -> None:
        """Write inside the caller's transaction."""
        await conn.execute(self.INSERT, self.row(category, action, outcome, **kwargs))

    async def record(self, category: str, action: str, outcome: str, **kwargs: Any) -> int:
        """Write one row in its own transaction; returns its id."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(self.INSERT, self.row(category, action, outcome, **kwargs))
            return int(cur.lastrowid)

    async def set_detail(self, entry_id: int, **detail: Any) -> None:
        """Replace one row's detail: for a row that aggregates repeated events (a count that grows)."""
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE audit SET detail = ? WHERE id = ?",
                               (json.dumps(detail, default=str, separators=(",", ":")), entry_id))

    async def prune(self, keep_days: float) -> int:
        """Delete rows older than `keep_days`; returns how many went."""
        async with self._db.transaction() as conn:
            cur = await conn.execute("DELETE FROM audit WHERE at < ?", (self._now() - keep_days * 86400.0,))
            return cur.rowcount

    async def recent(self, *, limit: int = 20, channel_id: str | None = None, failed_only: bool = False,
                     category: str | None = None) -> list[AuditEntry]:
        where, params = [], []
        if channel_id is not None:
            where.append("channel_id = ?")
            params.append(channel_id)
        if failed_only:
            where.append("outcome IN ('failed', 'error', 'denied', 'dead', 'retry')")
        if category:
            where.append("category = ?")
            params.append(category)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        rows = await self._db.fetchall(sql, (*params, limit))
        return [AuditEntry(r["id"], r["at"], r["category"], r["action"], r["outcome"], r["channel_id"],
                           r["company"], r["record_id"], r["delivery_id"], r["actor"],
                           json.loads(r["detail"]) if r["detail"] else {}) for r in rows]


# --------------------------------------------------------------------------- channels and bindings

class Channels:
    def __init__(self, db: Database, now=time.time) -> None:
        self._db = db
        self._now = now

    async def upsert(self, conn: aiosqlite.Connection, ref: ChannelRef) -> bool:
        """Save or refresh a conversation reference; reactivates the channel. True if it was new or inactive."""
        async with conn.execute("SELECT active FROM channels WHERE channel_id = ?", (ref.channel_id,)) as cur:
            row = await cur.fetchone()
        await conn.execute(
            "INSERT INTO channels (channel_id, tenant_id, team_id, service_url, reference, name, active, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (channel_id) DO UPDATE SET"
            " tenant_id = coalesce(excluded.tenant_id, tenant_id), team_id = coalesce(excluded.team_id, team_id),"
            " service_url = excluded.service_url, reference = excluded.reference,"
            " name = coalesce(excluded.name, name), active = 1, inactive_reason = NULL, updated_at = excluded.updated_at",
            (ref.channel_id, ref.tenant_id, ref.team_id, ref.service_url, json.dumps(ref.reference), ref.name,
             self._now()))
        return row is None or not row["active"]

    async def get(self, channel_id: str) -> ChannelRef | None:
        row = await self._db.fetchone("SELECT * FROM channels WHERE channel_id = ?", (channel_id,))
        return _channel(row) if row else None

    async def all(self) -> list[ChannelRef]:
        return [_channel(r) for r in await self._db.fetchall("SELECT * FROM channels ORDER BY channel_id")]

    async def set_active(self, conn: aiosqlite.Connection, channel_id: str, active: bool, reason: str | None) -> bool:
        cur = await conn.execute(
            "UPDATE channels SET active = ?, inactive_reason = ?, updated_at = ? WHERE channel_id = ? AND active != ?",
            (int(active), None if active else reason, self._now(), channel_id, int(active)))
        return cur.rowcount > 0

    async def set_active_for_team(self, conn: aiosqlite.Connection, team_id: str, active: bool,
                                  reason: str | None, *, only_reasons: Sequence[str] = ()) -> list[str]:
        """Change every channel of a team; with `only_reasons`, only channels made inactive for one of them."""
        sql = "SELECT channel_id FROM channels WHERE team_id = ? AND active != ?"
        params: list[Any] = [team_id, int(active)]
        if only_reasons:
            sql += f" AND inactive_reason IN ({','.join('?' * len(only_reasons))})"
            params.extend(only_reasons)
        async with conn.execute(sql, params) as cur:
            ids = [r[0] for r in await cur.fetchall()]
        for cid in ids:
            await self.set_active(conn, cid, active, reason)
        return ids

    async def set_quiet_hours(self, conn: aiosqlite.Connection, channel_id: str, span: str | None) -> None:
        await conn.execute("UPDATE channels SET quiet_hours = ?, updated_at = ? WHERE channel_id = ?",
                           (span, self._now(), channel_id))

    async def set_paused(self, conn: aiosqlite.Connection, channel_id: str, paused: bool) -> None:
        await conn.execute("UPDATE channels SET paused = ?, updated_at = ? WHERE channel_id = ?",
                           (int(paused), self._now(), channel_id))

    async def rename(self, conn: aiosqlite.Connection, channel_id: str, name: str | None) -> None:
        await conn.execute("UPDATE channels SET name = ?, updated_at = ? WHERE channel_id = ?",
                           (name, self._now(), channel_id))


def _channel(row: Any) -> ChannelRef:
    return ChannelRef(channel_id=row["channel_id"], tenant_id=row["tenant_id"], team_id=row["team_id"],
                      service_url=row["service_url"], reference=json.loads(row["reference"]), name=row["name"],
                      active=bool(row["active"]), inactive_reason=row["inactive_reason"], paused=bool(row["paused"]),
                      quiet_hours=row["quiet_hours"])


class Bindings:
    def __init__(self, db: Database, now=time.time) -> None:
        self._db = db
        self._now = now

    async def put(self, conn: aiosqlite.Connection, b: Binding) -> bool:
        """Create or replace the binding of (channel, company). True when it did not exist before."""
        async with conn.execute("SELECT 1 FROM bindings WHERE channel_id = ? AND company = ?",
                                (b.channel_id, b.company)) as cur:
            existed = await cur.fetchone() is not None
        await conn.execute(
            "INSERT INTO bindings (channel_id, company, kinds, cost_centers, min_amount, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id, company) DO UPDATE SET kinds = excluded.kinds,"
            " cost_centers = excluded.cost_centers, min_amount = excluded.min_amount, created_by = excluded.created_by",
            (b.channel_id, b.company, ",".join(sorted(k.value for k in b.kinds)), ",".join(sorted(b.cost_centers)),
             None if b.min_amount is None else str(b.min_amount), b.created_by, self._now()))
        return not existed

    async def remove(self, conn: aiosqlite.Connection, channel_id: str, company: str | None) -> int:
        if company is None:
            cur = await conn.execute("DELETE FROM bindings WHERE channel_id = ?", (channel_id,))
        else:
            cur = await conn.execute("DELETE FROM bindings WHERE channel_id = ? AND company = ?", (channel_id, company))
        return cur.rowcount

    async def for_channel(self, channel_id: str) -> list[Binding]:
        rows = await self._db.fetchall("SELECT * FROM bindings WHERE channel_id = ? ORDER BY company", (channel_id,))
        return [_binding(r) for r in rows]

    async def all(self, *, active_only: bool = False) -> list[Binding]:
        sql = "SELECT b.* FROM bindings b"
        if active_only:
            sql += " JOIN channels c USING (channel_id) WHERE c.active = 1"
        return [_binding(r) for r in await self._db.fetchall(sql + " ORDER BY b.channel_id, b.company")]

    async def companies(self) -> list[str]:
        """Companies that at least one active channel is bound to: the ones worth polling."""
        rows = await self._db.fetchall(
            "SELECT DISTINCT b.company FROM bindings b JOIN channels c USING (channel_id) WHERE c.active = 1"
            " ORDER BY b.company")
        return [r[0] for r in rows]


def _binding(row: Any) -> Binding:
    return Binding(channel_id=row["channel_id"], company=row["company"],
                   kinds=frozenset(RecordKind(k) for k in row["kinds"].split(",") if k),
                   cost_centers=frozenset(c for c in row["cost_centers"].split(",") if c),
                   min_amount=None if row["min_amount"] is None else Decimal(row["min_amount"]),
                   created_by=row["created_by"])


# --------------------------------------------------------------------------- seen records and source state

class ChainRow(NamedTuple):
    """A seen record whose card is in a channel, with what is known of its approval lines."""

    key: str
    state: str
    step: str
    event_id: int
    chain: str  # summary of the approval lines when they were last read ("" = never read)
    chain_checked: float


@dataclass(frozen=True, slots=True)
class SourceState:
    kind: str
    company: str
    last_run: float | None
    last_ok: float | None
    last_error: str | None
    available: bool
    pending: int


class Seen:
    def __init__(self, db: Database) -> None:
        self._db = db

    # A record's version as a poll compares it: etag, state and approval step joined by a unit separator,
    # which the poller refuses inside any of them (so equal texts mean equal triples).
    VERSION_SQL = "s.etag || char(31) || s.state || char(31) || s.step"
    VERSION = "{}\x1f{}\x1f{}".format

    async def known(self, kind: RecordKind, company: str) -> int:
        """How many records of a source the last polls left pending."""
        return int(await self._db.scalar("SELECT count(*) FROM seen WHERE kind = ? AND company = ?",
                                         (kind.value, company)))

    async def compare(self, kind: RecordKind, company: str, keys: Sequence[str], etags: Sequence[str],
                      states: Sequence[str], steps: Sequence[str]) -> dict[str, str | None]:
        """The keys among these whose version differs from the one seen, each with the state seen then
        (None: never seen). SQLite compares (on the database thread, without holding the GIL) against
        the page sent as one JSON object {key: version}: no Python object per unchanged record."""
        versions = orjson.dumps(dict(zip(keys, map(self.VERSION, etags, states, steps), strict=True)))

        def read(conn: sqlite3.Connection) -> dict[str, str | None]:
            cur = conn.cursor()
            cur.row_factory = None
            return dict(cur.execute(
                "SELECT j.key, s.state FROM json_each(?) AS j"
                " LEFT JOIN seen AS s ON s.kind = ? AND s.company = ? AND s.key = j.key"
                f" WHERE s.key IS NULL OR {self.VERSION_SQL} IS NOT j.value", (versions, kind.value, company)))

        return await self._db.run_read(read)

    async def left(self, kind: RecordKind, company: str, present: Iterable[str]) -> list[tuple[str, str, int]]:
        """(key, state, event id) of the seen records not among `present`, by key: the ones that left."""
        rows = await self._db.fetchall(
            "SELECT key, state, event_id FROM seen WHERE kind = ? AND company = ?"
            " AND key NOT IN (SELECT value FROM json_each(?)) ORDER BY key",
            (kind.value, company, orjson.dumps(list(present))))
        return [(r[0], r[1], r[2]) for r in rows]

    async def with_cards(self, kind: RecordKind, company: str) -> list[ChainRow]:
        """Seen records whose card sits in some channel: the ones whose approval progress people see."""
        prefix = f"{kind.value}:{company}:"
        rows = await self._db.fetchall(
            "SELECT s.key, s.state, s.step, s.event_id, s.chain, s.chain_checked"
            " FROM (SELECT DISTINCT substr(record_id, ?) AS key FROM cards WHERE record_id >= ? AND record_id < ?) c"
            " JOIN seen s ON s.kind = ? AND s.company = ? AND s.key = c.key",
            (len(prefix) + 1, prefix, prefix + "\uffff", kind.value, company))
        return [ChainRow(*r) for r in rows]

    async def mark_chains_checked(self, kind: RecordKind, company: str, keys: Sequence[str], at: float) -> None:
        async with self._db.transaction() as conn:
            await conn.executemany("UPDATE seen SET chain_checked = ? WHERE kind = ? AND company = ? AND key = ?",
                                   [(at, kind.value, company, k) for k in keys])

    async def last_record(self, event_id: int) -> FinanceRecord:
        return load_record(await self._db.scalar("SELECT record FROM events WHERE id = ?", (event_id,)))

    async def pending_records(self, company: str) -> list[tuple[int, FinanceRecord]]:
        rows = await self._db.fetchall(
            "SELECT e.id, e.record FROM seen s JOIN events e ON e.id = s.event_id WHERE s.company = ?", (company,))
        return [(r[0], load_record(r[1])) for r in rows]

    async def source_states(self) -> list[SourceState]:
        rows = await self._db.fetchall("SELECT * FROM sources ORDER BY kind, company")
        return [SourceState(r["kind"], r["company"], r["last_run"], r["last_ok"], r["last_error"],
                            bool(r["available"]), r["pending"]) for r in rows]

    async def quarantined_keys(self, kind: RecordKind, company: str) -> set[str]:
        rows = await self._db.fetchall("SELECT key FROM quarantine WHERE kind = ? AND company = ?",
                                       (kind.value, company))
        return {r[0] for r in rows}

    async def quarantine_counts(self) -> dict[tuple[str, str], int]:
        """Rows quarantined now (bad at their last poll), by (kind, company)."""
        rows = await self._db.fetchall("SELECT kind, company, count(*) FROM quarantine GROUP BY kind, company")
        return {(r[0], r[1]): int(r[2]) for r in rows}


# --------------------------------------------------------------------------- events, outbox, cards

class Outbox:
    """Events and their deliveries; the poller writes, the delivery worker claims and settles."""

    def __init__(self, db: Database, now=time.time) -> None:
        self._db = db
        self._now = now

    async def backfill(self, conn: aiosqlite.Connection, channel_id: str, items: Iterable[tuple[int, FinanceRecord]],
                       binding: Binding) -> int:
        """Queue what is already pending for a newly linked channel (events the poller made earlier)."""
        now = self._now()
        rows = [(eid, channel_id, rec.record_id, EventType.NEW.value, now, now)
                for eid, rec in items if binding.matches(rec)]
        if not rows:
            return 0
        cur = await conn.executemany(
            "INSERT OR IGNORE INTO deliveries (event_id, channel_id, record_id, event_type, next_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", rows)
        return max(cur.rowcount, 0)  # deliveries that already existed are not queued again

    async def release_all_leases(self, conn: aiosqlite.Connection) -> int:
        """At start-up of the only worker: whatever is still 'sending' was claimed by a process that died."""
        cur = await conn.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'sending'")
        return cur.rowcount

    async def release_expired_leases(self, conn: aiosqlite.Connection) -> int:
        cur = await conn.execute(
            "UPDATE deliveries SET status = 'pending' WHERE status = 'sending' AND lease_until < ?", (self._now(),))
        return cur.rowcount

    async def due_channels(self, limit: int = 1000) -> list[str]:
        rows = await self._db.fetchall(
            "SELECT DISTINCT d.channel_id FROM deliveries d JOIN channels c USING (channel_id)"
            " WHERE d.status = 'pending' AND d.next_at <= ? AND c.active = 1 AND c.paused = 0 LIMIT ?",
            (self._now(), limit))
        return [r[0] for r in rows]

    async def next_due_at(self) -> float | None:
        v = await self._db.scalar(
            "SELECT min(d.next_at) FROM deliveries d JOIN channels c USING (channel_id)"
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
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE deliveries SET status = 'superseded' WHERE channel_id = ? AND status = 'pending'"
                " AND id NOT IN (SELECT max(id) FROM deliveries WHERE channel_id = ? AND status = 'pending'"
                " GROUP BY record_id)", (channel_id, channel_id))
            async with conn.execute(
                    "SELECT count(*), sum(last_code IS 'batched') FROM deliveries WHERE channel_id = ?"
                    " AND status = 'pending' AND next_at <= ? AND event_type = 'new'", (channel_id, now)) as cur:
                new_count, batched = await cur.fetchone()
            if new_count > digest_threshold or (batched and new_count > 1):
                sql = ("UPDATE deliveries SET status = 'sending', lease_until = ?, attempts = attempts + 1"
                       " WHERE channel_id = ? AND status = 'pending' AND next_at <= ? AND event_type = 'new'"
                       " RETURNING id")
                params: tuple = (now + lease, channel_id, now)
            else:
                sql = ("UPDATE deliveries SET status = 'sending', lease_until = ?, attempts = attempts + 1"
                       " WHERE id = (SELECT id FROM deliveries WHERE channel_id = ? AND status = 'pending'"
                       " AND next_at <= ? ORDER BY id LIMIT 1) RETURNING id")
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

    async def settle(self, conn: aiosqlite.Connection, ids: Sequence[int], status: DeliveryStatus, *,
                     http_status: int | None = None, code: str | None = None, error: str | None = None,
                     next_at: float | None = None, digest_id: int | None = None) -> None:
        now = self._now()
        await conn.executemany(
            "UPDATE deliveries SET status = ?, lease_until = NULL, last_status = ?, last_code = ?, last_error = ?,"
            " next_at = coalesce(?, next_at), sent_at = CASE WHEN ? IN ('sent', 'digested') THEN ? ELSE sent_at END,"
            " digest_id = coalesce(?, digest_id) WHERE id = ?",
            [(status.value, http_status, code, error, next_at, status.value, now, digest_id, i) for i in ids])

    async def card_for(self, record_id: str, channel_id: str) -> PostedCard | None:
        row = await self._db.fetchone("SELECT conversation_id, activity_id FROM cards WHERE record_id = ?"
                                      " AND channel_id = ?", (record_id, channel_id))
        return PostedCard(row[0], row[1]) if row else None

    async def save_card(self, conn: aiosqlite.Connection, record_id: str, channel_id: str, card: PostedCard) -> None:
        await conn.execute(
            "INSERT INTO cards (record_id, channel_id, conversation_id, activity_id, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (record_id, channel_id) DO UPDATE SET conversation_id = excluded.conversation_id,"
            " activity_id = excluded.activity_id, updated_at = excluded.updated_at",
            (record_id, channel_id, card.conversation_id, card.activity_id, self._now()))

    async def forget_card(self, conn: aiosqlite.Connection, record_id: str, channel_id: str) -> None:
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
        params: tuple = ()
        if channel_id is not None:
            sql += " WHERE channel_id = ?"
            params = (channel_id,)
        rows = await self._db.fetchall(sql + " GROUP BY status", params)
        return {r[0]: r[1] for r in rows}

    async def oldest_pending_age(self) -> float:
        v = await self._db.scalar("SELECT min(created_at) FROM deliveries WHERE status IN ('pending', 'sending')")
        return 0.0 if v is None else max(0.0, self._now() - float(v))


def _delivery(r: Any) -> Delivery:
    return Delivery(id=r["id"], event_id=r["event_id"], channel_id=r["channel_id"], record_id=r["record_id"],
                    event_type=EventType(r["event_type"]), status=DeliveryStatus(r["status"]),
                    attempts=r["attempts"], created_at=r["created_at"],
                    record=load_record(r["record"]), previous_state=r["previous_state"])


class PollWriter:
    """Writes one poll page's effects (seen rows, events, deliveries, source state) in one transaction."""

    def __init__(self, db: Database, now=time.time) -> None:
        self._db = db
        self._now = now

    async def apply(self, kind: RecordKind, company: str, changes: Sequence[Change], bindings: Sequence[Binding], *,
                    bad_rows: Sequence[tuple[str, str, str]] = (), audit: AuditLog | None = None) -> int:
        """Writes the changes of one page (events, deliveries, seen) and its bad rows. Returns deliveries made.

        Part of a poll, which finish() closes: see Database.run_transaction(synced=False)."""
        now = self._now()
        prefix = record_id(kind, company, "")
        # Changes are grouped by what their events and seen rows share (type, previous state, state,
        # approval step, chain; a first poll's page is one group per state). Each group travels as one
        # JSON object {key: stored record} and one JSON array of etags, which SQLite unpacks (json_each)
        # in one INSERT of events and one of seen rows: the database thread writes a page in a handful
        # of statements, never parses a record again and never takes the GIL back for a row. The grouping
        # itself goes column by column: a first poll's page is 5,000 changes of one group.
        records_of = list(map(itemgetter(1), changes))
        keys = _field(records_of, "key")
        if len(set(keys)) != len(keys):
            # one event per record and page: a second one would be written in group order, not in order
            raise ValueError("a record appears twice in one page's changes")
        chains: Iterable[str] = repeat("")
        if any(_field(records_of, "approvers")):
            chains = [rec.get("approval_step") or "" if type(rec) is dict and rec.get("approvers") else ""
                      for rec in records_of]
        parts = [list(map(itemgetter(0), changes)), list(map(itemgetter(2), changes)), _field(records_of, "state"),
                 list(map(itemgetter(3), changes)), chains]
        groups: dict[tuple[str, str | None, str, str, str], dict[str, Any]] = {}
        if changes and all(part.count(part[0]) == len(part) for part in parts if isinstance(part, list)):
            # one group (list.count compares in C; a tuple of an enum member would hash it in Python)
            groups[(parts[0][0].value, parts[1][0], parts[2][0], parts[3][0], next(iter(chains)))] = dict(
                zip(keys, records_of, strict=True))
        else:
            for etype, prev, state, step, chain, key, rec in zip(*parts, keys, records_of, strict=False):
                groups.setdefault((etype.value, prev, state, step, chain), {})[key] = rec
        # A binding without filters takes every event of a page of this kind and company (one INSERT ...
        # SELECT for it); a narrowed one is matched here, record by record.
        kind_value = kind.value
        uniform = set(_field(records_of, "company")) <= {company} and set(_field(records_of, "kind")) <= {kind_value}
        whole = [b for b in bindings if uniform and b.company == company and kind in b.kinds
                 and not b.cost_centers and b.min_amount is None]
        partial = [b for b in bindings if b not in whole]
        batches: list[tuple[int, int, tuple[str, str | None, str, str, str], bytes, bytes]] = []
        dels: list[tuple[Any, ...]] = []
        offset = 0
        for group, records in groups.items():
            batches.append((offset, len(records), group, orjson.dumps(records),
                            orjson.dumps(_field(list(records.values()), "etag"))))
            if partial:
                for n, rec in enumerate(records.values(), start=offset):
                    full = FinanceRecord.from_dict(rec)
                    dels.extend((n, b.channel_id, prefix + full.key, group[0], now, now)
                                for b in partial if b.matches(full))
            offset += len(records)
        total = offset
        quarantined = [(kind.value, company, key, fld, problem, now, now) for key, fld, problem in bad_rows]
        audits = [] if audit is None else [
            audit.row("record", "quarantine", "skipped", company=company, record_id=prefix + key,
                      field=fld, problem=problem) for key, fld, problem in bad_rows]

        def write(conn: sqlite3.Connection) -> int:
            """Everything prepared above, in one transaction on the database thread; ids are base + offset."""
            deliveries = 0
            if total:
                base = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
                for start, count, (etype_value, prev, state, step, chain), records_json, etags_json in batches:
                    first, last = base + start, base + start + count - 1
                    # rowids are given as max + 1, row by row: the group's events are first .. last
                    got = conn.execute("INSERT INTO events (record_id, type, record, previous_state, created_at)"
                                       " SELECT ? || key, ?, value, ?, ? FROM json_each(?)",
                                       (prefix, etype_value, prev, now, records_json)).lastrowid
                    if got != last:
                        raise sqlite3.IntegrityError(f"events ids {first}..{got}, expected ..{last}")
                    if etype_value == EventType.RESOLVED.value:
                        conn.execute("DELETE FROM seen WHERE kind = ? AND company = ? AND key IN"
                                     " (SELECT substr(record_id, ?) FROM events WHERE id BETWEEN ? AND ?)",
                                     (kind.value, company, len(prefix) + 1, first, last))
                        continue
                    conn.execute(
                        "INSERT INTO seen (kind, company, key, etag, state, step, event_id, first_seen, chain,"
                        " chain_checked) SELECT ?, ?, substr(e.record_id, ?), j.value, ?, ?, e.id, ?, ?, ?"
                        " FROM json_each(?) AS j CROSS JOIN events AS e WHERE e.id = ? + j.key"
                        " ON CONFLICT (kind, company, key) DO UPDATE SET"
                        " etag = excluded.etag, state = excluded.state, step = excluded.step, event_id = excluded.event_id,"
                        " chain = CASE WHEN excluded.chain != '' THEN excluded.chain ELSE chain END,"
                        " chain_checked = max(chain_checked, excluded.chain_checked)",
                        (kind.value, company, len(prefix) + 1, state, step, now, chain, now if chain else 0.0,
                         etags_json, first))
                for b in whole:
                    deliveries += conn.execute(
                        "INSERT OR IGNORE INTO deliveries (event_id, channel_id, record_id, event_type, next_at,"
                        " created_at) SELECT id, ?, record_id, type, ?, ? FROM events WHERE id BETWEEN ? AND ?",
                        (b.channel_id, now, now, base, base + total - 1)).rowcount
                if dels:
                    deliveries += conn.executemany(
                        "INSERT OR IGNORE INTO deliveries (event_id, channel_id, record_id, event_type, next_at,"
                        " created_at) VALUES (? + ?, ?, ?, ?, ?, ?)", [(base, *d) for d in dels]).rowcount
            if quarantined:  # (each statement on this thread costs a GIL hand-over: none for nothing)
                conn.executemany(
                    "INSERT INTO quarantine (kind, company, key, field, problem, first_at, last_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (kind, company, key) DO UPDATE SET field = excluded.field, problem = excluded.problem,"
                    " last_at = excluded.last_at, count = count + 1", quarantined)
            if audits:
                conn.executemany(AuditLog.INSERT, audits)
            return deliveries

        # a poll's pages commit without waiting for the disk; finish() closes the poll with a synced commit
        return await self._db.run_transaction(write, synced=False)

    async def _record_source(self, conn: aiosqlite.Connection, kind: str, company: str, ok: bool,
                             error: str | None, pending: int | None = None) -> None:
        """Upsert one row of `sources`: ('*', '*') is IFS as a whole, (kind, company) one polled source."""
        now = self._now()
        await conn.execute(
            "INSERT INTO sources (kind, company, last_run, last_ok, last_error, available, pending)"
            " VALUES (?, ?, ?, ?, ?, ?, coalesce(?, 0)) ON CONFLICT (kind, company) DO UPDATE SET"
            " last_run = excluded.last_run, last_ok = coalesce(excluded.last_ok, last_ok),"
            " last_error = excluded.last_error, available = excluded.available, pending = coalesce(?, pending)",
            (kind, company, now, now if ok else None, error, int(ok), pending, pending))

    async def finish(self, kind: RecordKind, company: str, *, ok: bool, pending: int | None, error: str | None,
                     audit: AuditLog, summary: dict[str, Any], unquarantine: Sequence[str] = ()) -> None:
        """Close a poll: the source's state, its audit line, and the release of quarantined rows that
        were fine (or gone) this time."""
        async with self._db.transaction() as conn:
            await self._record_source(conn, kind.value, company, ok, error, pending)
            if unquarantine:
                await conn.executemany("DELETE FROM quarantine WHERE kind = ? AND company = ? AND key = ?",
                                       [(kind.value, company, key) for key in unquarantine])
                summary = {**summary, "released": len(unquarantine)}
            await audit.add(conn, "poll", f"poll {kind.value}", "ok" if ok else "failed", company=company, **summary)

    async def ifs_available(self) -> bool:
        v = await self._db.scalar("SELECT available FROM sources WHERE kind = '*' AND company = '*'")
        return v is None or bool(v)

    async def set_ifs_available(self, available: bool, error: str | None, audit: AuditLog) -> None:
        async with self._db.transaction() as conn:
            await self._record_source(conn, "*", "*", available, error)
            await audit.add(conn, "poll", "ifs " + ("recovered" if available else "unavailable"),
                            "ok" if available else "error", error=error)
