"""What the polls have seen: pending records' versions, approval-line checks, source state, quarantine."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from core.domain import FinanceRecord, RecordKind
from store.db import Database, SqliteDatabase
from store.pg import PgDatabase
from store.records import load_record


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

    async def known_by_company(self, kind: RecordKind, companies: Sequence[str]) -> dict[str, int]:
        """How many records of a source the last polls left pending, per company (a listing serves them all)."""
        rows = await self._db.fetchall(
            f"SELECT company, count(*) FROM seen WHERE kind = ? AND company {self._in_list()} GROUP BY company",
            (kind.value, self._list(companies)))
        return {r[0]: int(r[1]) for r in rows}

    async def quarantined_by_company(self, kind: RecordKind, companies: Sequence[str]) -> dict[str, set[str]]:
        """The rows set aside (quarantined) at the last poll, per company, in one query."""
        rows = await self._db.fetchall(
            f"SELECT company, key FROM quarantine WHERE kind = ? AND company {self._in_list()}",
            (kind.value, self._list(companies)))
        out: dict[str, set[str]] = {}
        for company, key in rows:
            out.setdefault(company, set()).add(key)
        return out

    async def compare_many(self, kind: RecordKind, pages: Sequence[tuple[str, Sequence[str], Sequence[str],
                                                                         Sequence[str], Sequence[str]]]
                           ) -> list[dict[str, str | None]]:
        """Per (company, keys, etags, states, steps) of a page: the keys among these whose version differs from
        the one seen, each with the state seen then (None: never seen). SQLite compares, on the database thread
        and without the GIL, against each company's rows sent as one JSON object {key: version}: no Python
        object per unchanged record, and one trip to the database thread for every company of the page."""
        if isinstance(self._db, PgDatabase):
            return await self._compare_many_pg(self._db, kind, pages)
        assert isinstance(self._db, SqliteDatabase)
        asked = [(company, orjson.dumps(dict(zip(keys, map(self.VERSION, etags, states, steps), strict=True))))
                 for company, keys, etags, states, steps in pages]

        def read(conn: sqlite3.Connection) -> list[dict[str, str | None]]:
            cur = conn.cursor()
            cur.row_factory = None
            return [dict(cur.execute(
                "SELECT j.key, s.state FROM json_each(?) AS j"
                " LEFT JOIN seen AS s ON s.kind = ? AND s.company = ? AND s.key = j.key"
                f" WHERE s.key IS NULL OR {self.VERSION_SQL} IS NOT j.value", (versions, kind.value, company)))
                for company, versions in asked]

        return await self._db.run_read(read)

    async def _compare_many_pg(self, db: PgDatabase, kind: RecordKind,
                               pages: Sequence[tuple[str, Sequence[str], Sequence[str], Sequence[str], Sequence[str]]]
                               ) -> list[dict[str, str | None]]:
        """compare_many on PostgreSQL: each company's page as arrays, compared column by column."""
        out: list[dict[str, str | None]] = []
        async with db.connection() as conn:
            for company, keys, etags, states, steps in pages:
                rows = await conn.raw.fetch(
                    "SELECT u.k, s.state FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(k, e, st, sp)"
                    " LEFT JOIN seen AS s ON s.kind = $5 AND s.company = $6 AND s.key = u.k"
                    " WHERE s.key IS NULL OR (s.etag, s.state, s.step) IS DISTINCT FROM (u.e, u.st, u.sp)",
                    list(keys), list(etags), list(states), list(steps), kind.value, company)
                out.append({r[0]: r[1] for r in rows})
        return out

    def _in_list(self) -> str:
        """`IN` a list given as one parameter (_list): a JSON array on SQLite, an array on PostgreSQL."""
        return "= ANY(?)" if self._db.dialect == "postgresql" else "IN (SELECT value FROM json_each(?))"

    def _list(self, values: Iterable[str]) -> list[str] | bytes:
        return list(values) if self._db.dialect == "postgresql" else orjson.dumps(list(values))

    async def left(self, kind: RecordKind, company: str, present: Iterable[str]) -> list[tuple[str, str, int]]:
        """(key, state, event id) of the seen records not among `present`, by key: the ones that left."""
        rows = await self._db.fetchall(
            f"SELECT key, state, event_id FROM seen WHERE kind = ? AND company = ? AND NOT (key {self._in_list()})"
            " ORDER BY key", (kind.value, company, self._list(present)))
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

    async def markers(self, kind: RecordKind, company: str) -> dict[str, str]:
        """Each pending record's change marker as last seen (etag, or row version), by key: no record read."""
        rows = await self._db.fetchall("SELECT key, etag FROM seen WHERE kind = ? AND company = ?",
                                       (kind.value, company))
        return {str(r[0]): str(r[1]) for r in rows}

    async def pending_records(self, company: str) -> list[tuple[int, FinanceRecord]]:
        rows = await self._db.fetchall(
            "SELECT e.id, e.record FROM seen s JOIN events e ON e.id = s.event_id WHERE s.company = ?", (company,))
        return [(r[0], load_record(r[1])) for r in rows]

    async def source_states(self) -> list[SourceState]:
        rows = await self._db.fetchall("SELECT * FROM sources ORDER BY kind, company")
        return [SourceState(r["kind"], r["company"], r["last_run"], r["last_ok"], r["last_error"],
                            bool(r["available"]), r["pending"]) for r in rows]

    async def quarantine_counts(self) -> dict[tuple[str, str], int]:
        """Rows quarantined now (bad at their last poll), by (kind, company)."""
        rows = await self._db.fetchall("SELECT kind, company, count(*) FROM quarantine GROUP BY kind, company")
        return {(r[0], r[1]): int(r[2]) for r in rows}
