"""The audit log: one row per poll, message, command and delivery attempt; reading it back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.clock import SYSTEM_CLOCK, Clock
from store.db import Connection, Database


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


class AuditLog:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._now = clock.time

    INSERT = ("INSERT INTO audit (at, category, action, outcome, channel_id, company, record_id, delivery_id,"
              " actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    INSERT_RETURNING = INSERT + " RETURNING id"

    def row(self, category: str, action: str, outcome: str, *, channel_id: str | None = None,
            company: str | None = None, record_id: str | None = None, delivery_id: int | None = None,
            actor: str | None = None, **detail: Any) -> tuple[Any, ...]:
        """The parameters of one audit INSERT, stamped now."""
        return (self._now(), category, action, outcome, channel_id, company, record_id, delivery_id, actor,
                json.dumps(detail, default=str, separators=(",", ":")) if detail else None)

    async def add(self, conn: Connection, category: str, action: str, outcome: str, **kwargs: Any) -> None:
        """Write inside the caller's transaction."""
        await conn.execute(self.INSERT, self.row(category, action, outcome, **kwargs))

    async def record(self, category: str, action: str, outcome: str, **kwargs: Any) -> int:
        """Write one row in its own transaction; returns its id."""
        async with self._db.transaction() as conn:
            async with conn.execute(self.INSERT_RETURNING, self.row(category, action, outcome, **kwargs)) as cur:
                row = await cur.fetchone()
        assert row is not None  # an INSERT ... RETURNING returns its row
        return int(row[0])

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

    async def count(self, category: str, action: str | None = None) -> int:
        """Rows of one category (and action)."""
        return int(await self._db.scalar(
            "SELECT count(*) FROM audit WHERE category = ?" + (" AND action = ?" if action is not None else ""),
            (category,) if action is None else (category, action)))

    async def detail_total(self, category: str, key: str) -> Any:
        """The sum of one number in the details of a category's rows (a row aggregating repeats holds a count)."""
        rows = await self._db.fetchall("SELECT detail FROM audit WHERE category = ? AND detail IS NOT NULL",
                                       (category,))
        return sum(v for v in (json.loads(r[0]).get(key) for r in rows) if v is not None)

    async def last_delivery_problem(self, channel_id: str | None = None) -> AuditEntry | None:
        """The latest failed, dead or retried delivery attempt (of one channel, or of any)."""
        entries = await self._entries(
            "SELECT * FROM audit WHERE category = 'delivery' AND outcome IN ('failed', 'dead', 'retry')"
            + (" AND channel_id = ?" if channel_id else "") + " ORDER BY id DESC LIMIT 1",
            (channel_id,) if channel_id else ())
        return entries[0] if entries else None

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
        return await self._entries(sql, (*params, limit))

    async def _entries(self, sql: str, params: tuple[Any, ...]) -> list[AuditEntry]:
        rows = await self._db.fetchall(sql, params)
        return [AuditEntry(r["id"], r["at"], r["category"], r["action"], r["outcome"], r["channel_id"],
                           r["company"], r["record_id"], r["delivery_id"], r["actor"],
                           json.loads(r["detail"]) if r["detail"] else {}) for r in rows]
