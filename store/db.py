"""The database behind the store: what every back end offers (`Database`), SQLite through aiosqlite (the
default: pragmas, versioned migrations, the write transaction), and `open_database`, which picks the back
end from `service.database` (a file path, or a postgresql:// URL: store.pg)."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import sqlite3
import stat
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import aiosqlite
import asyncpg

from core.errors import ConfigError
from store import _aiosqlite_adapter
from store.migrations import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION_TABLE, statements

log = logging.getLogger(__name__)
T = TypeVar("T")
Params = tuple[Any, ...] | dict[str, Any]
# What a database call raises when the database fails (a full disk, a lost server), on either back end;
# a server that cannot be reached fails as the socket does (OSError, TimeoutError)
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                                          TimeoutError)
SYNCHRONOUS = "FULL"  # every commit waits for the disk, unless run_transaction(synced=False) says otherwise


# A row as both drivers return it (sqlite3.Row, asyncpg.Record): by position or by column name.
Row = Any


class Cursor(Protocol):
    """What a statement gives back: its rows, and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...
    async def fetchone(self) -> Row | None: ...
    async def fetchall(self) -> Iterable[Row]: ...


class PendingCursor(Protocol):
    """`await conn.execute(...)` runs the statement; `async with conn.execute(...) as cur` too, and reads it."""

    def __await__(self) -> Generator[Any, None, Cursor]: ...
    async def __aenter__(self) -> Cursor: ...
    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...


class Connection(Protocol):
    """The connection a write transaction hands the repositories: aiosqlite's, or store.pg's stand-in for it.
    SQL uses `?` placeholders on both back ends."""

    def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> PendingCursor: ...
    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> PendingCursor: ...


class Database(ABC):
    """The store's database: one writer at a time per process (`transaction()`), reads anywhere."""

    dialect: ClassVar[str]  # "sqlite" or "postgresql": the few statements that differ branch on it

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """One write transaction: everything done through the connection commits together, or nothing does."""

    @abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> Sequence[Row]: ...

    @abstractmethod
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def scalar(self, sql: str, params: Params = ()) -> Any:  # whatever the database holds there
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def write_now(self, sql: str, params: Params = ()) -> int:
        """One statement committed on its own; returns the rows it changed. On a server it does not wait for
        this process's other writes (a lease renewed or a heartbeat written while a poll writes pages); on
        SQLite it is a write transaction like any other (one process, no one else's lease to lose)."""
        async with self.transaction() as conn:
            cur = await conn.execute(sql, params)
            return int(cur.rowcount)

    @abstractmethod
    def free_disk_bytes(self) -> int | None:
        """Free space where the database writes; None when that is not this machine's disk (a server)."""

    @abstractmethod
    async def writable(self) -> bool:
        """Readiness: can we write right now?"""

    @abstractmethod
    async def size_bytes(self) -> int:
        """What the database takes on disk."""

    @abstractmethod
    async def backup_to(self, target: str) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class SqliteDatabase(Database):
    """One connection per process; writes go through `transaction()` (BEGIN IMMEDIATE), one at a time."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self._write_lock = asyncio.Lock()
        self._closed = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
            except asyncio.CancelledError:
                # aiosqlite may still run the BEGIN in its thread: queue the undo behind it
                await asyncio.shield(self.conn.rollback())
                raise
            try:
                yield self.conn
                await self.conn.commit()
            except BaseException:
                # also when COMMIT itself failed (disk full, a deferred constraint): never leave the
                # connection inside a transaction, or every later BEGIN would fail
                await asyncio.shield(self.conn.rollback())  # (a no-op outside a transaction)
                raise

    async def run_transaction(self, work: Callable[[sqlite3.Connection], T], *, synced: bool = True) -> T:
        """Run `work(connection)` on the database thread inside one BEGIN IMMEDIATE ... COMMIT.

        One round trip instead of one per statement: the event loop (and the poller mapping the next
        page) keeps going while the thread writes, and the thread releases the GIL inside SQLite.
        The transaction is atomic even if the awaiting task is cancelled: the thread finishes it
        (commit, or rollback on error) before it runs anything queued after it.

        synced=False commits without waiting for the disk (synchronous=NORMAL for this one commit): the
        transaction is atomic and survives the process being killed, but a power cut before the next
        synced commit could undo it, together with everything committed after it. For a poll's pages:
        the poll ends with a synced commit (PollWriter.finish), and anything delivered from a page is
        marked so with a synced commit; the write-ahead log is one file written in order, so either makes
        every earlier page durable too. A page undone by a power cut is simply read as new again.
        """
        def run(raw: sqlite3.Connection) -> T:
            if not synced:
                raw.execute("PRAGMA synchronous=NORMAL")
            try:
                raw.execute("BEGIN IMMEDIATE")
                try:
                    out = work(raw)
                    raw.commit()
                except BaseException:
                    if raw.in_transaction:  # also when COMMIT itself failed
                        raw.rollback()
                    raise
            finally:
                if not synced:
                    raw.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            return out

        # Queued while holding the write lock, awaited after releasing it. The job is one unit on the
        # thread's first-in first-out queue, so a transaction() that takes the lock after this one
        # begins after it has committed; and a poll's next page, queued while this one is being
        # written, starts the moment it is done, not when the busy event loop gets round to it.
        async with self._write_lock:
            done = self._enqueue(run)
        return await done

    def _enqueue(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return _aiosqlite_adapter.enqueue(self.conn, fn)

    async def run_read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` on the database thread, outside any write transaction: for reads that
        hold several statements or much data (a poll's page compared with what was seen), in one round trip."""
        return await self._enqueue(work)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self.conn.execute(sql, params) as cur:
            return await cur.fetchone()

    def free_disk_bytes(self) -> int:
        return free_disk_bytes(self.path)

    async def size_bytes(self) -> int:
        """The file with its write-ahead log and shared-memory index."""
        files = [Path(self.path + suffix) for suffix in ("", "-wal", "-shm")]
        return sum(f.stat().st_size for f in files if f.exists())

    async def writable(self) -> bool:
        """Readiness: can we take the write lock and write right now?"""
        try:
            async with self.transaction() as conn:
                await conn.execute("UPDATE meta SET value = value WHERE name = 'created'")
            return True
        except sqlite3.Error:
            return False

    async def backup_to(self, target: str) -> None:
        """Online backup (SQLite backup API) to a new file; safe while the service runs.

        Written to a new file beside `target` (owner-only from the start) and renamed over it when complete:
        SQLite's backup retries a busy target forever, so it never writes into a file someone else may have
        open (a previous backup being inspected, a second backup at the same moment), and a failed backup
        leaves no half-written one. Taken under the write lock: the backup runs on this connection's
        thread, and while this connection is inside a transaction SQLite answers every backup step with
        SQLITE_BUSY, which Python's backup retries forever, so the transaction's own next statement, queued
        behind it on that thread, would never run. Under the lock no transaction of ours is open; other
        processes' writes only make the step retry until they commit."""
        final = Path(os.path.realpath(target))  # a link to the backup file: the file it points to is replaced
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_backups(final)
        partial = final.with_name(f".{final.name}.{os.getpid()}.{id(self):x}.partial")
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            dest = await aiosqlite.connect(partial)
            try:
                async with self._write_lock:
                    await self.conn.backup(dest)
            finally:
                await dest.close()
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.conn.close()


def _remove_abandoned_backups(final: Path) -> None:
    """The new files of earlier backups to `final` whose process is gone (killed mid-backup)."""
    for left in final.parent.glob(f".{glob.escape(final.name)}.*.partial"):
        try:
            pid = int(left.name.split(".")[-3])
            os.kill(pid, 0)  # (signal 0: only asks whether the process exists)
        except ProcessLookupError:
            left.unlink(missing_ok=True)
            log.warning("removed %s, left by a backup that did not finish", left)
        except (ValueError, IndexError, PermissionError):
            continue  # not ours, or a live process of another user


def free_disk_bytes(path: str) -> int:
    """Free space, in bytes, of the filesystem that holds the database file `path`."""
    return shutil.disk_usage(Path(path).resolve().parent).free


def owner_only(path: str | os.PathLike[str], key: str) -> None:
    """Make an existing file 0600 when group or others may read it (a copy made by hand, a restore);
    a warning names the file. Raises ConfigError when its mode cannot be changed."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        log.warning("%s %s had mode %o (readable by others); changed to 600", key, path, mode)
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            raise ConfigError(key, f"{path} has mode {mode:o} and cannot be made 600: {exc.strerror}") from None


def is_server_url(target: str) -> bool:
    """True for a PostgreSQL URL (postgresql://... or postgres://...); anything else is a SQLite file path."""
    return target.startswith(("postgresql://", "postgres://"))


async def open_database(target: str) -> Database:
    """Open (creating if needed) and migrate the database `service.database` names: a PostgreSQL URL
    (store.pg), or the path of a SQLite file."""
    if is_server_url(target):
        from store.pg import open_pg  # (store.pg builds on this module)

        return await open_pg(target)
    return await open_sqlite(target)


async def open_sqlite(path: str) -> SqliteDatabase:
    """Open (creating if needed) and migrate a SQLite file. `:memory:` is not supported: we want real files.

    A file that is not a database, or that cannot be written, raises ConfigError naming it; the
    connection is closed first, as aiosqlite's thread would otherwise keep the process alive.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("service.database", f"cannot create the directory of {path}: {exc.strerror}") from None
    fresh = not os.path.exists(path)
    if not fresh:
        for suffix in ("", "-wal", "-shm"):  # the WAL holds recent rows, secrets included
            owner_only(path + suffix, "service.database")
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise ConfigError("service.database", f"cannot open {path}: {exc}") from None
    try:
        conn.row_factory = sqlite3.Row
        if fresh:
            os.chmod(path, 0o600)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=10000")
        try:  # a poll's page is written through SQLite's JSON functions (json_each)
            await conn.execute("SELECT count(*) FROM json_each('[1]')")
        except sqlite3.OperationalError:
            raise ConfigError("service.database", f"SQLite {sqlite3.sqlite_version} lacks the JSON functions"
                              " (json_each); use a Python built with SQLite 3.38 or later") from None
        db = SqliteDatabase(conn, path)
        await migrate(db)
        # a read-only file opens and migrates (nothing to change) without a complaint: ask for a write
        async with db.transaction() as tx:
            await tx.execute("UPDATE meta SET value = value WHERE name = 'created'")
        return db
    except sqlite3.Error as exc:
        await conn.close()
        raise ConfigError("service.database", f"{path} cannot be used: {exc} (a corrupt file, or not"
                                              " writable by this user)") from None
    except BaseException:
        await conn.close()
        raise


async def migrate(db: Database) -> int:
    """Apply the migrations not yet applied, in one transaction. On PostgreSQL under an advisory lock:
    replicas starting together take turns, and the second finds nothing left to do."""
    async with db.transaction() as conn:
        if db.dialect == "postgresql":
            await conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        for statement in statements(SCHEMA_VERSION_TABLE, db.dialect):
            await conn.execute(statement)
        async with conn.execute("SELECT max(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = int((row[0] if row is not None else None) or 0)
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            for statement in statements(script, db.dialect):
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            log.info("database migrated to version %d", version)
            current = version
    return current
