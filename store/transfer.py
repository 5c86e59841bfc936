"""Copy a whole store from one back end to another (`app.py migrate-store`): SQLite <-> PostgreSQL.

Both stores are opened the way the service opens them (so both are migrated to this version's schema),
the target must hold no data, and every table is copied in dependency order, in batches, inside one
transaction on the target: the copy lands whole or not at all. Ids are kept (the outbox, the audit
trail and the seen rows point at each other by id); on PostgreSQL the identity sequences are then set
past the largest id. Row counts are compared per table before the commit. Secrets are copied as their
ciphertext: the same master key reads them in the new store.

The source is read in one snapshot; what a running service wrote after it would be lost, so the copy
refuses a store the service still runs on (the scheduler's lock is held, or PostgreSQL replicas sent a
heartbeat moments ago), and holds that lock itself while it copies. Stop the service (every replica) first.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import aiosqlite
import asyncpg

from core.errors import NotifierError
from store.db import SqliteDatabase, is_server_url, open_database, open_sqlite
from store.leader import LEADER_KEY, FileLeadership, Timing
from store.pg import has_password, redact

# Every table of the schema, parents before children (bindings -> channels, seen and deliveries ->
# events). A migration that adds a table adds it here too: a table the copy does not know is refused,
# never left behind.
TABLES: tuple[str, ...] = ("meta", "secrets", "channels", "bindings", "events", "seen", "deliveries", "cards",
                           "sources", "quarantine", "audit", "people", "claims", "snoozes", "leadership")
# Never copied: the database's own bookkeeping (each side keeps its own), and what running replicas hold
# only while they run (heartbeats, channel leases): a stopped service holds none that matter, and a stale
# lease copied over would only hold a channel back until it ran out.
NOT_COPIED = frozenset({"schema_version", "sqlite_sequence", "sqlite_stat1", "sqlite_stat4", "replicas",
                        "channel_leases"})
# Rows every freshly migrated store already holds: the target's are replaced by the source's.
REPLACED = frozenset({"meta"})
BATCH = 1000
COPIER = "migrate-store"  # this command, as the holder of the scheduler's lock for the copy
# A replica's heartbeat is younger than this many seconds (twice it, to be safe) while it runs; the
# default of service.leader_takeover_seconds, as the source's settings are not known here.
ASSUMED_TAKEOVER = 15.0

Row = tuple[Any, ...]


class TransferRefused(NotifierError):
    """The copy was not started (or not committed): the message says why; the target is as it was."""


@dataclass(frozen=True)
class Copied:
    table: str
    rows: int


@dataclass(frozen=True)
class TransferReport:
    source: str  # described, never with a password
    target: str
    schema_version: int
    tables: tuple[Copied, ...]
    seconds: float

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


# --------------------------------------------------------------------------- naming a store

def sqlite_path(target: str) -> str:
    """`sqlite:PATH`, `sqlite:///ABSOLUTE` or a bare path (as `service.database` takes it) -> the file path."""
    if target.startswith("sqlite://"):
        return target.removeprefix("sqlite://")
    return target.removeprefix("sqlite:")


def describe(target: str) -> str:
    """The store for messages and commands: a PostgreSQL URL without its password (in the user part or a
    `password=` parameter); a SQLite path as sqlite:PATH."""
    if not is_server_url(target):
        return "sqlite:" + sqlite_path(target)
    return redact(target, mask=None)


def _check_name(option: str, target: str) -> None:
    if not target:
        raise TransferRefused(f"{option}: empty: give sqlite:PATH or postgresql://USER@HOST[:PORT]/DATABASE")
    if is_server_url(target):
        if has_password(target):
            raise TransferRefused(f"{option} {describe(target)}: a password on the command line can be read by"
                                  " other users of this machine; put it in PGPASSWORD or a PGPASSFILE instead")
    elif "://" in target and not target.startswith("sqlite://"):
        raise TransferRefused(f"{option}: {target.split('://')[0]}:// is not a store: give sqlite:PATH or"
                              " postgresql://USER@HOST[:PORT]/DATABASE")
    elif not sqlite_path(target):
        raise TransferRefused(f"{option}: sqlite: needs a file path, e.g. sqlite:/data/notifier.sqlite3")


# --------------------------------------------------------------------------- the two back ends

class _Side(Protocol):
    """One store as the copy sees it: its catalogue, a snapshot to read and one transaction to write."""

    name: str

    async def hold(self) -> str | None: ...  # the scheduler's lock taken for the copy, or why not
    async def version(self) -> int: ...
    async def tables(self) -> set[str]: ...
    async def columns(self, table: str) -> list[tuple[str, str]]: ...  # (name, declared type)
    async def count(self, table: str) -> int: ...
    async def begin_read(self) -> None: ...
    def rows(self, table: str, columns: Sequence[str], batch: int) -> AsyncIterator[list[Row]]: ...
    async def begin_write(self) -> None: ...
    async def delete_all(self, table: str) -> None: ...
    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None: ...
    async def after_copy(self, table: str) -> None: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    async def close(self) -> None: ...


def _ident(name: str) -> str:
    """A table or column name from the catalogue, quoted (they are plain words; refuse anything else)."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unexpected name in the schema: {name!r}")
    return f'"{name}"'


class _SqliteSide:
    def __init__(self, db: SqliteDatabase, name: str) -> None:
        self.db, self.name = db, name
        self.conn: aiosqlite.Connection = db.conn
        self._lock = FileLeadership(db, db.path, COPIER, Timing(ASSUMED_TAKEOVER))

    async def hold(self) -> str | None:
        if self._lock.try_lock():
            return None
        return (f"a notifier process is running on {self.name} (it holds {self._lock.path}): stop the service"
                " first, or what it writes during the copy is lost")

    async def _values(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        async with self.conn.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def version(self) -> int:
        return int((await self._values("SELECT max(version) FROM schema_version"))[0][0] or 0)

    async def tables(self) -> set[str]:
        rows = await self._values("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(r[0]) for r in rows}

    async def columns(self, table: str) -> list[tuple[str, str]]:
        rows = await self._values(f"PRAGMA table_info({_ident(table)})")
        return [(str(r[1]), str(r[2]).lower()) for r in rows]

    async def count(self, table: str) -> int:
        return int((await self._values(f"SELECT count(*) FROM {_ident(table)}"))[0][0])

    async def begin_read(self) -> None:
        await self.conn.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot (WAL)
        await self._values("SELECT count(*) FROM schema_version")

    async def rows(self, table: str, columns: Sequence[str], batch: int) -> AsyncIterator[list[Row]]:
        async with self.conn.execute(f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(table)}") as cur:
            while chunk := await cur.fetchmany(batch):
                yield [tuple(r) for r in chunk]

    async def begin_write(self) -> None:
        await self.conn.execute("BEGIN IMMEDIATE")

    async def delete_all(self, table: str) -> None:
        await self.conn.execute(f"DELETE FROM {_ident(table)}")

    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        await self.conn.executemany(f"INSERT INTO {_ident(table)} ({', '.join(map(_ident, columns))})"
                                    f" VALUES ({', '.join('?' for _ in columns)})", rows)

    async def after_copy(self, table: str) -> None:
        return None  # an INTEGER PRIMARY KEY continues after the largest id by itself

    async def commit(self) -> None:
        await self.conn.commit()

    async def rollback(self) -> None:
        await self.conn.rollback()

    async def close(self) -> None:
        self._lock.unlock()
        await self.db.close()


class _PostgresSide:
    """asyncpg on a connection of its own (the store's own handle is used to migrate only)."""

    def __init__(self, conn: Any, name: str) -> None:
        self.conn, self.name = conn, name
        self._tx: Any = None

    async def hold(self) -> str | None:
        # the lock the leading replica holds for as long as it runs; held here, no replica can start polling
        if not await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_KEY):
            return (f"a replica of the service runs the scheduler on {self.name}: stop every replica first,"
                    " or what they write during the copy is lost")
        alive = await self.conn.fetch("SELECT replica FROM replicas WHERE seen_at >= $1 ORDER BY replica",
                                      time.time() - 2 * ASSUMED_TAKEOVER)
        if alive:
            return (f"replicas of the service were alive on {self.name} moments ago"
                    f" ({', '.join(str(r[0]) for r in alive)}): stop every replica first")
        return None

    async def version(self) -> int:
        return int(await self.conn.fetchval("SELECT max(version) FROM schema_version") or 0)

    async def tables(self) -> set[str]:
        rows = await self.conn.fetch("SELECT table_name FROM information_schema.tables"
                                     " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
        return {str(r[0]) for r in rows}

    async def columns(self, table: str) -> list[tuple[str, str]]:
        rows = await self.conn.fetch("SELECT column_name, data_type FROM information_schema.columns"
                                     " WHERE table_schema = current_schema() AND table_name = $1"
                                     " ORDER BY ordinal_position", table)
        return [(str(r[0]), str(r[1]).lower()) for r in rows]

    async def count(self, table: str) -> int:
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {_ident(table)}"))

    async def begin_read(self) -> None:
        self._tx = self.conn.transaction(isolation="repeatable_read", readonly=True)
        await self._tx.start()

    async def rows(self, table: str, columns: Sequence[str], batch: int) -> AsyncIterator[list[Row]]:
        cursor = await self.conn.cursor(f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(table)}")
        while chunk := await cursor.fetch(batch):
            yield [tuple(r) for r in chunk]

    async def begin_write(self) -> None:
        self._tx = self.conn.transaction()
        await self._tx.start()
        self._schema = await self.conn.fetchval("SELECT current_schema()")  # where COPY writes

    async def delete_all(self, table: str) -> None:
        await self.conn.execute(f"DELETE FROM {_ident(table)}")

    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        # COPY: one round trip per batch; it writes identity columns as given (no OVERRIDING needed)
        await self.conn.copy_records_to_table(table, records=rows, columns=list(columns),
                                              schema_name=self._schema)

    async def after_copy(self, table: str) -> None:
        for column, _type in await self.columns(table):
            seq = await self.conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", _ident(table), column)
            if seq:
                top = await self.conn.fetchval(f"SELECT max({_ident(column)}) FROM {_ident(table)}")
                # next value: one past the largest copied id (1 for an empty table)
                await self.conn.execute("SELECT setval($1, $2, $3)", seq, int(top or 1), top is not None)

    async def commit(self) -> None:
        await self._tx.commit()
        self._tx = None

    async def rollback(self) -> None:
        if self._tx is not None:
            await self._tx.rollback()
            self._tx = None

    async def close(self) -> None:
        await self.conn.close()


async def _open(option: str, target: str, *, must_exist: bool) -> _Side:
    """Open (and so migrate) the store the way the service does; then the side the copy works with."""
    name = describe(target)
    if not is_server_url(target):
        path = sqlite_path(target)
        if must_exist and not os.path.isfile(path):
            raise TransferRefused(f"{option} {name}: no such file")
        return _SqliteSide(await open_sqlite(path), name)
    migrated = await open_database(target)  # migrates it to this version's schema
    await migrated.close()
    try:
        conn = await asyncpg.connect(target)
    except (OSError, asyncpg.PostgresError) as exc:
        raise TransferRefused(f"{option}: cannot connect to {name}: {exc}") from None
    return _PostgresSide(conn, name)


# --------------------------------------------------------------------------- values between the two

def _converter(declared: str) -> Callable[[Any], Any]:
    """What a value read from one back end must be for the target's column type (asyncpg checks types
    strictly: 1 is not a boolean there, nor a str a bytea; SQLite cannot hold a Decimal)."""
    t = declared.lower()
    if t == "boolean":
        return bool
    if t in ("bytea", "blob"):
        return lambda v: v.encode() if isinstance(v, str) else bytes(v)
    if "int" in t:
        return lambda v: int(v)
    if t in ("real", "double precision", "float", "double"):
        return float
    if t == "numeric":
        return lambda v: Decimal(str(v))
    if t in ("text", "character varying", "varchar", "json", "jsonb"):
        return lambda v: v if isinstance(v, str) else str(v)
    return lambda v: float(v) if isinstance(v, Decimal) else v


def _convert(rows: list[Row], converters: Sequence[Callable[[Any], Any]]) -> list[Row]:
    return [tuple(None if v is None else f(v) for f, v in zip(converters, row, strict=True)) for row in rows]


# --------------------------------------------------------------------------- the copy

async def transfer(source: str, target: str, *, batch: int = BATCH,
                   progress: Callable[[str], None] | None = None) -> TransferReport:
    """Copy every row of `source` into the empty store `target` (see the module's docstring)."""
    _check_name("--from", source)
    _check_name("--to", target)
    if describe(source) == describe(target) or (
            not is_server_url(source) and not is_server_url(target)
            and os.path.realpath(sqlite_path(source)) == os.path.realpath(sqlite_path(target))):
        raise TransferRefused(f"--to {describe(target)} is the source itself")
    started = time.monotonic()
    say = progress or (lambda _line: None)
    src = await _open("--from", source, must_exist=True)
    try:
        await _hold("--from", src)  # before the target is made: a refused copy leaves no new file behind
        dst = await _open("--to", target, must_exist=False)
        try:
            await _hold("--to", dst)
            report = await _copy(src, dst, batch, say)
        finally:
            await dst.close()
    finally:
        await src.close()
    return TransferReport(src.name, dst.name, report[0], report[1], time.monotonic() - started)


async def _hold(option: str, side: _Side) -> None:
    """Take the scheduler's lock of the store for the copy: refused while the service runs on it."""
    if problem := await side.hold():
        raise TransferRefused(f"{option}: {problem}")


async def _copy(src: _Side, dst: _Side, batch: int, say: Callable[[str], None]) -> tuple[int, tuple[Copied, ...]]:
    version, target_version = await src.version(), await dst.version()
    if version != target_version:
        raise TransferRefused(f"--to {dst.name} is at schema version {target_version}, {src.name} at {version}:"
                              " run this command with the version of the service that wrote the newer one")
    for side in (src, dst):
        have = await side.tables()
        unknown, missing = sorted(have - set(TABLES) - NOT_COPIED), sorted(set(TABLES) - have)
        if unknown or missing:
            option = "--from" if side is src else "--to"
            raise TransferRefused(f"{option} {side.name}: its tables do not match this version's schema"
                                  + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                                  + (f" (missing: {', '.join(missing)})" if missing else ""))
    holding = [(t, n) for t in TABLES if t not in REPLACED and (n := await dst.count(t))]
    if holding:
        raise TransferRefused(f"--to {dst.name} already holds data ("
                              + ", ".join(f"{t}: {n} rows" for t, n in holding) + "); migrate-store copies into an"
                              " empty store only: give a new database (createdb) or a new file")
    plan: list[tuple[str, list[str], list[Callable[[Any], Any]]]] = []
    for table in TABLES:
        theirs, ours = await src.columns(table), await dst.columns(table)
        if sorted(c for c, _ in theirs) != sorted(c for c, _ in ours):
            raise TransferRefused(f"table {table} has other columns in {dst.name} than in {src.name}")
        plan.append((table, [c for c, _ in ours], [_converter(t) for _, t in ours]))

    await src.begin_read()
    try:
        expected = {table: await src.count(table) for table in TABLES}
        await dst.begin_write()
        try:
            copied = []
            for table, columns, converters in plan:
                if table in REPLACED:
                    await dst.delete_all(table)
                async for rows in src.rows(table, columns, batch):
                    try:
                        await dst.insert(table, columns, _convert(rows, converters))
                    except Exception as exc:  # sqlite3.Error, asyncpg's errors, a value of the wrong type
                        raise TransferRefused(f"table {table}: a row cannot be written to {dst.name}:"
                                              f" {type(exc).__name__}: {exc}; nothing was committed") from exc
                await dst.after_copy(table)
                got = await dst.count(table)
                if got != expected[table]:
                    raise TransferRefused(f"table {table}: {expected[table]} rows in {src.name}, {got} in {dst.name}"
                                       " after the copy; nothing was committed")
                copied.append(Copied(table, got))
                say(f"{table:12} {got:>10} rows")
            await dst.commit()
        except BaseException:
            await dst.rollback()
            raise
    finally:
        await src.rollback()
    return version, tuple(copied)
