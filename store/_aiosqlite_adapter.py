"""The one place that reaches past aiosqlite's public API: running a whole function on its database thread.

aiosqlite offers one call per statement (`execute`, `commit`, ...), each a round trip through the event
loop. A poll's page is written as one function on the thread (BEGIN ... COMMIT in a single job), which
aiosqlite has no public call for; so this module puts the job on the connection's private queue, as
`Connection._execute` does, and hands the job the thread's `sqlite3.Connection`.

Written against aiosqlite WRITTEN_FOR; tests/test_boundaries.py fails when another version is
installed, so an upgrade re-reads `aiosqlite/core.py` (`_tx`, `_running`, `_connection`, `_conn`)
before it ships. No other module may use these attributes (the same test greps the tree).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import TypeVar

import aiosqlite

WRITTEN_FOR = "0.22.1"
T = TypeVar("T")


def enqueue(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
    """Queue `fn(raw_connection)` on `conn`'s thread and return its future, without awaiting it.

    Queued synchronously, so the caller decides the order of jobs (a write queued under a lock runs
    before anything queued after the lock is released). `fn` runs on the database thread, the only
    thread that may touch the raw connection.
    """
    if not conn._running or not conn._connection:
        raise ValueError("Connection closed")
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    conn._tx.put_nowait((future, lambda: fn(conn._conn)))
    return future
