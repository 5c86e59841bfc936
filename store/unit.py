"""The store as one object: repositories sharing one database and one clock, and units of work.

`async with store.unit() as u:` opens one BEGIN IMMEDIATE transaction; `u.channels`, `u.bindings`,
`u.audit`, `u.outbox`, `u.people`, `u.claims` and `u.reminders` are those repositories with their writes
bound to it (`u.audit.add(...)` is `store.audit.add(conn, ...)`), so a caller never holds the connection.
Everything written in the block commits together, or nothing does. Reads outside a unit go through
`store.channels`, `store.bindings`, ... directly.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from core.clock import SYSTEM_CLOCK, Clock
from store.audit import AuditLog
from store.bindings import Bindings
from store.channels import Channels
from store.db import Connection, Database
from store.outbox import Outbox
from store.people import Claims, People, ReminderStore
from store.seen import Seen


class Store:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self.clock = clock
        self.audit = AuditLog(db, clock)
        self.channels = Channels(db, clock)
        self.bindings = Bindings(db, clock)
        self.outbox = Outbox(db, clock)
        self.people = People(db, clock)
        self.claims = Claims(db, clock)
        self.reminders = ReminderStore(db)
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

    def __init__(self, store: Store, conn: Connection) -> None:
        self.channels = _Bound(store.channels, conn)
        self.bindings = _Bound(store.bindings, conn)
        self.audit = _Bound(store.audit, conn)
        self.outbox = _Bound(store.outbox, conn)
        self.people = _Bound(store.people, conn)
        self.claims = _Bound(store.claims, conn)
        self.reminders = _Bound(store.reminders, conn)


class _Bound:
    """A repository whose writing methods (those taking the connection first) get the unit's connection."""

    def __init__(self, repo: object, conn: Connection) -> None:
        self._repo, self._conn = repo, conn

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return functools.partial(getattr(self._repo, name), self._conn)
