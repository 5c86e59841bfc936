"""Writing a poll: one page's seen rows, events and deliveries in one transaction, and the source's state."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import Binding, EventType, FinanceRecord, RecordKind, record_id
from store.audit import AuditLog
from store.db import Connection, Database, SqliteDatabase
from store.pg import PgDatabase, status_count
from store.records import Change, stored_field

QUARANTINE = ("INSERT INTO quarantine (kind, company, key, field, problem, first_at, last_at)"
              " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, company, key) DO UPDATE SET field = excluded.field,"
              " problem = excluded.problem, last_at = excluded.last_at, count = quarantine.count + 1")


@dataclass(frozen=True)
class Finished:
    """How one company's poll of a source ended."""

    company: str
    ok: bool
    pending: int | None
    error: str | None
    summary: dict[str, Any]
    unquarantine: Sequence[str] = ()


class PollWriter:
    """Writes one poll page's effects (seen rows, events, deliveries, source state) in one transaction."""

    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._now = clock.time

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
        keys = stored_field(records_of, "key")
        if len(set(keys)) != len(keys):
            # one event per record and page: a second one would be written in group order, not in order
            raise ValueError("a record appears twice in one page's changes")
        chains: Iterable[str] = repeat("")
        approvers = stored_field(records_of, "approvers")
        if any(approvers):
            chains = [(step or "") if steps else "" for steps, step in
                      zip(approvers, stored_field(records_of, "approval_step"), strict=True)]
        parts: list[Any] = [list(map(itemgetter(0), changes)), list(map(itemgetter(2), changes)),
                 stored_field(records_of, "state"), list(map(itemgetter(3), changes)), chains]
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
        uniform = (set(stored_field(records_of, "company")) <= {company}
                   and set(stored_field(records_of, "kind")) <= {kind_value})
        whole = [b for b in bindings if uniform and b.company == company and kind in b.kinds
                 and not b.cost_centers and b.min_amount is None]
        partial = [b for b in bindings if b not in whole]
        batches: list[tuple[int, int, tuple[str, str | None, str, str, str], dict[str, Any]]] = []
        dels: list[tuple[Any, ...]] = []
        offset = 0
        for group, records in groups.items():
            batches.append((offset, len(records), group, records))
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

        if isinstance(self._db, PgDatabase):
            return await self._write_pg(self._db, kind, company, now, batches, total, whole, dels, quarantined,
                                        audits)
        assert isinstance(self._db, SqliteDatabase)
        json_batches = [(start, count, group, orjson.dumps(records),
                         orjson.dumps(stored_field(list(records.values()), "etag")))
                        for start, count, group, records in batches]

        def write(conn: sqlite3.Connection) -> int:
            """Everything prepared above, in one transaction on the database thread; ids are base + offset."""
            deliveries = 0
            if total:
                base = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
                for start, count, (etype_value, prev, state, step, chain), records_json, etags_json in json_batches:
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
                conn.executemany(QUARANTINE, quarantined)
            if audits:
                conn.executemany(AuditLog.INSERT, audits)
            return deliveries

        # a poll's pages commit without waiting for the disk; finish() closes the poll with a synced commit
        return await self._db.run_transaction(write, synced=False)

    async def _write_pg(self, db: PgDatabase, kind: RecordKind, company: str, now: float,
                        batches: Sequence[tuple[int, int, tuple[str, str | None, str, str, str], dict[str, Any]]],
                        total: int, whole: Sequence[Binding], dels: Sequence[tuple[Any, ...]],
                        quarantined: Sequence[tuple[Any, ...]], audits: Sequence[tuple[Any, ...]]) -> int:
        """apply()'s write on PostgreSQL: the page's event ids taken from the sequence first, the events copied
        in, then the other tables in one statement each over arrays (unnest), one per binding taking the whole
        page."""
        prefix = record_id(kind, company, "")
        deliveries = 0
        async with db.transaction() as tx:
            conn = tx.raw
            # as on SQLite (run_transaction(synced=False)): the page's commit does not wait for the disk; the
            # server's write-ahead log is written in order, so the poll's closing synced commit covers it
            await conn.execute("SET LOCAL synchronous_commit TO OFF")
            if total:
                ids: list[int] = [r[0] for r in await conn.fetch(
                    "SELECT nextval(pg_get_serial_sequence('events', 'id')) FROM generate_series(1, $1)", total)]
                record_ids: list[str] = []
                types: list[str] = []
                prevs: list[str | None] = []
                texts: list[str] = []
                gone: list[str] = []
                seen: tuple[list[Any], ...] = ([], [], [], [], [], [])  # key, etag, state, step, event id, chain
                for start, count, (etype_value, prev, state, step, chain), records in batches:
                    keys = list(records)
                    record_ids.extend(prefix + k for k in keys)
                    types.extend(repeat(etype_value, count))
                    prevs.extend(repeat(prev, count))
                    texts.extend(orjson.dumps(r).decode() for r in records.values())
                    if etype_value == EventType.RESOLVED.value:
                        gone.extend(keys)
                        continue
                    columns: tuple[Iterable[Any], ...] = (
                        keys, stored_field(list(records.values()), "etag"), repeat(state, count),
                        repeat(step, count), ids[start:start + count], repeat(chain, count))
                    for column, values in zip(seen, columns, strict=True):
                        column.extend(values)
                await conn.copy_records_to_table(  # (COPY: the fastest way in for rows that are all new)
                    "events", columns=("id", "record_id", "type", "record", "previous_state", "created_at"),
                    records=zip(ids, record_ids, types, texts, prevs, repeat(now, total), strict=True))
                if gone:
                    await conn.execute("DELETE FROM seen WHERE kind = $1 AND company = $2 AND key = ANY($3::text[])",
                                       kind.value, company, gone)
                if seen[0]:
                    await conn.execute(
                        "INSERT INTO seen (kind, company, key, etag, state, step, event_id, first_seen, chain,"
                        " chain_checked) SELECT $1, $2, u.k, u.e, u.s, u.st, u.i, $3::float8, u.c,"
                        " CASE WHEN u.c <> '' THEN $3::float8 ELSE 0 END FROM unnest($4::text[], $5::text[],"
                        " $6::text[], $7::text[], $8::bigint[], $9::text[]) AS u(k, e, s, st, i, c)"
                        " ON CONFLICT (kind, company, key) DO UPDATE SET etag = excluded.etag, state = excluded.state,"
                        " step = excluded.step, event_id = excluded.event_id,"
                        " chain = CASE WHEN excluded.chain <> '' THEN excluded.chain ELSE seen.chain END,"
                        " chain_checked = greatest(seen.chain_checked, excluded.chain_checked)",
                        kind.value, company, now, *seen)
                for b in whole:
                    deliveries += status_count(await conn.execute(
                        "INSERT INTO deliveries (event_id, channel_id, record_id, event_type, next_at, created_at)"
                        " SELECT u.i, $1, u.r, u.t, $2::float8, $2::float8"
                        " FROM unnest($3::bigint[], $4::text[], $5::text[]) AS u(i, r, t) ON CONFLICT DO NOTHING",
                        b.channel_id, now, ids, record_ids, types))
                if dels:
                    deliveries += status_count(await conn.execute(
                        "INSERT INTO deliveries (event_id, channel_id, record_id, event_type, next_at, created_at)"
                        " SELECT u.i, u.c, u.r, u.t, $1::float8, $1::float8 FROM unnest($2::bigint[], $3::text[],"
                        " $4::text[], $5::text[]) AS u(i, c, r, t) ON CONFLICT DO NOTHING",
                        now, [ids[d[0]] for d in dels], [d[1] for d in dels], [d[2] for d in dels],
                        [d[3] for d in dels]))
            if quarantined:
                await tx.executemany(QUARANTINE, quarantined)
            if audits:
                await tx.executemany(AuditLog.INSERT, audits)
        return deliveries

    async def _record_source(self, conn: Connection, kind: str, company: str, ok: bool,
                             error: str | None, pending: int | None = None) -> None:
        """Upsert one row of `sources`: ('*', '*') is IFS as a whole, (kind, company) one polled source."""
        now = self._now()
        await conn.execute(
            "INSERT INTO sources (kind, company, last_run, last_ok, last_error, available, pending)"
            " VALUES (?, ?, ?, ?, ?, ?, coalesce(?, 0)) ON CONFLICT (kind, company) DO UPDATE SET"
            " last_run = excluded.last_run, last_ok = coalesce(excluded.last_ok, sources.last_ok),"
            " last_error = excluded.last_error, available = excluded.available,"
            " pending = coalesce(?, sources.pending)",
            (kind, company, now, now if ok else None, error, int(ok), pending, pending))

    async def finish_many(self, kind: RecordKind, polls: Sequence[Finished], audit: AuditLog) -> None:
        """Close a cycle's polls, every company's in one transaction (one commit to disk, not one each): the
        source's state, its audit line, and the release of quarantined rows that were fine (or gone)."""
        async with self._db.transaction() as conn:
            for p in polls:
                await self._record_source(conn, kind.value, p.company, p.ok, p.error, p.pending)
                summary = p.summary
                if p.unquarantine:
                    await conn.executemany("DELETE FROM quarantine WHERE kind = ? AND company = ? AND key = ?",
                                           [(kind.value, p.company, key) for key in p.unquarantine])
                    summary = {**summary, "released": len(p.unquarantine)}
                await audit.add(conn, "poll", f"poll {kind.value}", "ok" if p.ok else "failed", company=p.company,
                                **summary)

    async def ifs_available(self) -> bool:
        v = await self._db.scalar("SELECT available FROM sources WHERE kind = '*' AND company = '*'")
        return v is None or bool(v)

    async def set_ifs_available(self, available: bool, error: str | None, audit: AuditLog) -> None:
        async with self._db.transaction() as conn:
            await self._record_source(conn, "*", "*", available, error)
            await audit.add(conn, "poll", "ifs " + ("recovered" if available else "unavailable"),
                            "ok" if available else "error", error=error)
