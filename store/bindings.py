"""Bindings: which IFS company (and kinds, cost centres, minimum amount) each channel follows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import Binding, RecordKind
from store.db import Connection, Database


class Bindings:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._now = clock.time

    async def put(self, conn: Connection, b: Binding) -> bool:
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

    async def remove(self, conn: Connection, channel_id: str, company: str | None) -> int:
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
