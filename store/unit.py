"""The store as one object: repositories sharing one database and one clock, and units of work.

`async with store.unit() as u:` opens one BEGIN IMMEDIATE transaction; `u.channels`, `u.bindings`,
`u.audit` and `u.outbox` are the repositories' writes bound to it, so a caller never holds the
connection. Everything written in the block commits together, or nothing does. Reads outside a unit
go through `store.channels`, `store.bindings`, ... directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import Binding, ChannelRef, FinanceRecord, PostedCard
from store.audit import AuditLog
from store.bindings import Bindings
from store.channels import Channels
from store.db import Database
from store.outbox import DeliveryStatus, Outbox
from store.seen import Seen


class Store:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self.clock = clock
        self.now = clock.time
        self.audit = AuditLog(db, clock)
        self.channels = Channels(db, clock)
        self.bindings = Bindings(db, clock)
        self.outbox = Outbox(db, clock)
        self.seen = Seen(db)

    async def row_counts(self) -> dict[str, int]:
        """Rows of what polls write: events, deliveries and seen records."""
        row = await self.db.fetchone("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries),"
                                     " (SELECT count(*) FROM seen)")
        assert row is not None  # a SELECT without FROM has exactly one row
        return {"events": int(row[0]), "deliveries": int(row[1]), "seen": int(row[2])}

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[Unit]:
        async with self.db.transaction() as conn:
            yield Unit(self, conn)


class Unit:
    """One transaction's writes; valid only inside its `async with` block."""

    def __init__(self, store: Store, conn: aiosqlite.Connection) -> None:
        self.channels = _Channels(store.channels, conn)
        self.bindings = _Bindings(store.bindings, conn)
        self.audit = _Audit(store.audit, conn)
        self.outbox = _Outbox(store.outbox, conn)


class _Channels:
    def __init__(self, repo: Channels, conn: aiosqlite.Connection) -> None:
        self._repo, self._conn = repo, conn

    async def upsert(self, ref: ChannelRef) -> bool:
        return await self._repo.upsert(self._conn, ref)

    async def set_active(self, channel_id: str, active: bool, reason: str | None) -> bool:
        return await self._repo.set_active(self._conn, channel_id, active, reason)

    async def set_active_for_team(self, team_id: str, active: bool, reason: str | None, *,
                                  only_reasons: Sequence[str] = ()) -> list[str]:
        return await self._repo.set_active_for_team(self._conn, team_id, active, reason, only_reasons=only_reasons)

    async def set_quiet_hours(self, channel_id: str, span: str | None) -> None:
        await self._repo.set_quiet_hours(self._conn, channel_id, span)

    async def set_paused(self, channel_id: str, paused: bool) -> None:
        await self._repo.set_paused(self._conn, channel_id, paused)

    async def rename(self, channel_id: str, name: str | None) -> None:
        await self._repo.rename(self._conn, channel_id, name)


class _Bindings:
    def __init__(self, repo: Bindings, conn: aiosqlite.Connection) -> None:
        self._repo, self._conn = repo, conn

    async def put(self, binding: Binding) -> bool:
        return await self._repo.put(self._conn, binding)

    async def remove(self, channel_id: str, company: str | None) -> int:
        return await self._repo.remove(self._conn, channel_id, company)


class _Audit:
    def __init__(self, repo: AuditLog, conn: aiosqlite.Connection) -> None:
        self._repo, self._conn = repo, conn

    async def add(self, category: str, action: str, outcome: str, **kwargs: Any) -> None:
        await self._repo.add(self._conn, category, action, outcome, **kwargs)


class _Outbox:
    def __init__(self, repo: Outbox, conn: aiosqlite.Connection) -> None:
        self._repo, self._conn = repo, conn

    async def backfill(self, channel_id: str, items: Iterable[tuple[int, FinanceRecord]], binding: Binding) -> int:
        return await self._repo.backfill(self._conn, channel_id, items, binding)

    async def settle(self, ids: Sequence[int], status: DeliveryStatus, **outcome: Any) -> None:
        await self._repo.settle(self._conn, ids, status, **outcome)

    async def save_card(self, record_id: str, channel_id: str, card: PostedCard) -> None:
        await self._repo.save_card(self._conn, record_id, channel_id, card)

    async def forget_card(self, record_id: str, channel_id: str) -> None:
        await self._repo.forget_card(self._conn, record_id, channel_id)
