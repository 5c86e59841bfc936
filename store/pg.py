"""PostgreSQL through an asyncpg pool: the same surface as the SQLite database (store.db.Database).

The repositories write SQL once, with `?` placeholders; `PgConnection` numbers them ($1, $2, ...) and
answers like aiosqlite's connection (`await conn.execute(...)`, `async with conn.execute(...) as cur`,
`cur.rowcount`, `cur.fetchall()`, `conn.executemany(...)`). Writes of one process still go one at a
time through `transaction()` (an asyncio lock, as on SQLite); between processes (replicas), row locks and
`FOR UPDATE SKIP LOCKED` keep writers apart. Reads go to any pooled connection, except inside a
transaction, where they see its uncommitted writes as they do on SQLite's single connection.

A password never appears in what this module logs or raises: URLs are shown with it masked.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import shlex
from collections.abc import AsyncIterator, Generator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from core.errors import ConfigError
from store.db import DB_ERRORS, Database, Params, Row, migrate

log = logging.getLogger(__name__)

POOL_SIZE = 10  # connections per process: one writer at a time, reads alongside
CONNECT_TIMEOUT = 10.0  # seconds to reach the server, at start-up and for each new pooled connection
# a statement's bound: a half-open connection (a server failed over silently) ends in an error, not a wait for
# TCP's retransmissions (about 15 minutes) while this process's writes queue behind it
COMMAND_TIMEOUT = 120.0


def has_password(url: str) -> bool:
    """Whether the URL carries a password, in its user part or as a `password=` parameter."""
    parts = urlsplit(url)
    return parts.password is not None or any(k == "password" for k, _ in parse_qsl(parts.query))


def redact(url: str, mask: str | None = "***") -> str:
    """The URL with its password (in the user part or a `password=` parameter) replaced by `mask` (for
    messages and logs), or left out (None: for a command to run, which then finds the password where libpq
    looks for one: PGPASSWORD or a pgpass file). Everything else (port, sslmode, ...) is kept."""
    try:
        if not has_password(url):
            return url
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        user = (parts.username or "") + ("" if mask is None or parts.password is None else ":" + mask)
        netloc = (f"{user}@" if user else "") + host + (f":{parts.port}" if parts.port else "")
        kept = [(k, v if k != "password" else mask) for k, v in query if k != "password" or mask is not None]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(kept, safe="*/")))
    except ValueError:  # unparsable: show nothing of it
        return "postgresql://…"


def pg_dump_command(url: str, target: str) -> str:
    """The command that backs the database at `url` up into the file `target`: the server's own consistent
    dump of the live database; the password from PGPASSWORD or a pgpass file, never on the command line."""
    return f"pg_dump --format=custom --file={shlex.quote(target)} --dbname={shlex.quote(redact(url, mask=None))}"


def backup_advice(url: str, target: str) -> str:
    """What `backup` says of a PostgreSQL store: the server's own tools, with runnable commands."""
    return (f"the database is PostgreSQL: back it up with `{pg_dump_command(url, target)}` (the password from"
            " PGPASSWORD or ~/.pgpass); restore into an empty database with `pg_restore --no-owner"
            f" --dbname={shlex.quote(redact(url, mask=None))} {shlex.quote(target)}` (see README \"Backups\")")


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, bool]:
    """`?` placeholders -> $1, $2, ... (outside quoted text and identifiers), and whether the statement
    returns rows (a query, or RETURNING). Every other `?` is a placeholder: the store's SQL uses neither
    PostgreSQL's jsonb `?` operators nor $$-quoted bodies holding one."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None  # a doubled quote ('') closes and reopens: the same text either way
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    text = "".join(out)
    head = text.lstrip().split(None, 1)[0].upper() if text.strip() else ""
    returns_rows = head in ("SELECT", "WITH", "VALUES") or re.search(r"\bRETURNING\b", text, re.IGNORECASE) is not None
    return text, returns_rows


def _args(params: Params | Iterable[Any] | None) -> Sequence[Any]:
    if params is None:
        return ()
    if isinstance(params, dict):
        raise TypeError("named parameters are not supported on PostgreSQL; use ? placeholders")
    return tuple(params)


def status_count(status: str) -> int:
    """Rows a command touched, from its status tag ('UPDATE 3', 'INSERT 0 1', 'DELETE 0')."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


class PgCursor:
    """A statement's outcome: its rows (already fetched) and how many rows it changed."""

    def __init__(self, rows: list[asyncpg.Record], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Row]:
        return list(self._rows)


class _Pending:
    """`await` it or `async with` it, as aiosqlite's execute result."""

    def __init__(self, run: Any) -> None:
        self._run = run

    def __await__(self) -> Generator[Any, None, PgCursor]:
        cursor: PgCursor = yield from self._run().__await__()
        return cursor

    async def __aenter__(self) -> PgCursor:
        cursor: PgCursor = await self._run()
        return cursor

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> None:
        return None


class PgConnection:
    """An asyncpg connection answering like aiosqlite's, for the repositories' `?` SQL. `raw` is the asyncpg
    connection itself, for the few PostgreSQL-only statements (arrays, unnest)."""

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> _Pending:
        return _Pending(functools.partial(self._execute, sql, _args(parameters)))

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> _Pending:
        return _Pending(functools.partial(self._executemany, sql, [_args(p) for p in parameters]))

    async def _execute(self, sql: str, args: Sequence[Any]) -> PgCursor:
        text, returns_rows = translate(sql)
        if returns_rows:
            rows = await self.raw.fetch(text, *args)
            return PgCursor(rows, len(rows))
        return PgCursor([], status_count(await self.raw.execute(text, *args)))

    async def _executemany(self, sql: str, many: list[Sequence[Any]]) -> PgCursor:
        """The statement once per parameter row, pipelined (one round trip, not one per row); each changed
        row answers one RETURNING row, so the count is aiosqlite's (the rows changed, summed)."""
        if not many:
            return PgCursor([], 0)
        text, returns_rows = translate(sql)
        rows = await self.raw.fetchmany(text if returns_rows else text + " RETURNING 1", many)
        return PgCursor([], len(rows))

    async def fetch(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.raw.fetch(translate(sql)[0], *_args(params))
        return rows


class PgDatabase(Database):
    """A pool of connections to one PostgreSQL database; writes of this process one at a time."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = redact(url)  # for messages: never the password
        self._url_for_tools = url  # handed to pg_dump_command, which leaves the password out
        self._write_lock = asyncio.Lock()
        # the transaction the running task is inside (tasks it starts inherit the variable: the task is checked)
        self._current: contextvars.ContextVar[tuple[asyncio.Task[Any] | None, PgConnection] | None] = (
            contextvars.ContextVar(f"pg_transaction_{id(self)}", default=None))
        self._closed = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgConnection]:
        async with self._write_lock, self.pool.acquire() as raw, raw.transaction():
            conn = PgConnection(raw)
            token = self._current.set((asyncio.current_task(), conn))
            try:
                yield conn
            finally:
                self._current.reset(token)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        """A connection for reading: the current transaction's inside one (its writes are visible), else a
        pooled one."""
        current = self._current.get()
        if current is not None and current[0] is asyncio.current_task():
            yield current[1]
            return
        async with self.pool.acquire() as raw:
            yield PgConnection(raw)

    async def fetchall(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(sql, params)

    async def write_now(self, sql: str, params: Params = ()) -> int:
        """A single statement commits by itself: on a pooled connection of its own, outside the write lock."""
        async with self.pool.acquire() as raw:
            return status_count(await raw.execute(translate(sql)[0], *_args(params)))

    async def fetchone(self, sql: str, params: Params = ()) -> asyncpg.Record | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def free_disk_bytes(self) -> None:
        return None  # the server's disk: watched where the server runs, not from here

    async def writable(self) -> bool:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT), self.transaction() as conn:
                await conn.execute("UPDATE meta SET value = value WHERE name = 'created'")
            return True
        except DB_ERRORS:
            return False

    async def size_bytes(self) -> int:
        return int(await self.scalar("SELECT pg_database_size(current_database())"))

    async def backup_to(self, target: str) -> None:
        raise ConfigError("backup", backup_advice(self._url_for_tools, target))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.pool.close()


async def open_pg(url: str) -> PgDatabase:
    """Connect to `url` (postgresql://user@host:port/database; the password from the URL, PGPASSWORD or a
    pgpass file) and migrate. Anything that keeps us from using it raises ConfigError, password masked."""
    shown = redact(url)
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT,
                                         command_timeout=COMMAND_TIMEOUT)
    except DB_ERRORS as exc:
        raise ConfigError("service.database", f"cannot connect to {shown}: {_problem(exc, url)}") from None
    except ValueError as exc:  # a malformed URL
        raise ConfigError("service.database", f"{shown} is not a usable PostgreSQL URL: {_problem(exc, url)}"
                          ) from None
    db = PgDatabase(pool, url)
    try:
        await migrate(db)
    except DB_ERRORS as exc:
        await db.close()
        raise ConfigError("service.database", f"{shown} cannot be used: {_problem(exc, url)}") from None
    except BaseException:
        await db.close()
        raise
    return db


def _problem(exc: BaseException, url: str) -> str:
    """The driver's message on one line, with the password masked should it quote the URL."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
