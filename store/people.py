"""People repository (IFS user -> Teams user) and the routing of events to approvers' personal chats."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import EventType, FinanceRecord, PostedCard
from core.people import Claim, Person, PersonStatus, next_approver
from store.db import Connection, Database
from store.outbox import QUEUE_DELIVERY
from store.records import load_record

log = logging.getLogger(__name__)

ROUTED_MARK = "people.routed_event"  # meta row: the last event id routed to personal chats
ROUTE_BATCH = 1000
_SET_MARK = "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"

_COLUMNS = "ifs_user, name, aad_object_id, upn, teams_id, status, conversation_id, personal, created_by"
_REPLACE = ", ".join(f"{c} = excluded.{c}" for c in [*_COLUMNS.split(", ")[1:], "updated_at"])  # every column


def _person(row: Any) -> Person:
    return Person(ifs_user=row["ifs_user"], name=row["name"], aad_object_id=row["aad_object_id"], upn=row["upn"],
                  teams_id=row["teams_id"], status=PersonStatus(row["status"]),
                  conversation_id=row["conversation_id"], personal=bool(row["personal"]),
                  created_by=row["created_by"])


class People:
    """IFS user -> Teams user mappings, personal chat preferences, and which approver a record waits for."""

    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._now = clock.time

    async def put(self, conn: Connection, p: Person) -> bool:
        """Insert or replace one mapping; True when the IFS user was not mapped before."""
        async with conn.execute("SELECT 1 FROM people WHERE ifs_user = ?", (p.ifs_user,)) as cur:
            existed = await cur.fetchone() is not None
        await conn.execute(
            f"INSERT INTO people ({_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (ifs_user) DO UPDATE SET {_REPLACE}",
            (p.ifs_user, p.name, p.aad_object_id, p.upn, p.teams_id, p.status.value, p.conversation_id,
             int(p.personal), p.created_by, self._now()))
        return not existed

    async def get(self, ifs_user: str) -> Person | None:
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM people WHERE ifs_user = ?", (ifs_user,))
        return _person(row) if row else None

    async def all(self) -> list[Person]:
        return [_person(r) for r in await self._db.fetchall(f"SELECT {_COLUMNS} FROM people ORDER BY ifs_user")]

    async def active(self) -> dict[str, Person]:
        """Confirmed mappings by IFS user: the only ones cards and personal chats use."""
        rows = await self._db.fetchall(f"SELECT {_COLUMNS} FROM people WHERE status = 'active'")
        return {r["ifs_user"]: _person(r) for r in rows}

    async def of_user(self, aad_object_id: str | None, teams_id: str | None) -> list[Person]:
        """Every mapping of one Teams user (known by Entra object id, or by 29: id when Teams gave no other)."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM people WHERE (aad_object_id IS NOT NULL AND aad_object_id = ?)"
            " OR (teams_id IS NOT NULL AND teams_id = ?) ORDER BY ifs_user",
            ((aad_object_id or "").lower() or None, teams_id))
        return [_person(r) for r in rows]

    async def remove(self, conn: Connection, ifs_users: Iterable[str]) -> int:
        cur = await conn.executemany("DELETE FROM people WHERE ifs_user = ?", [(u,) for u in ifs_users])
        return max(cur.rowcount, 0)

    async def set_status(self, conn: Connection, ifs_user: str, status: PersonStatus) -> None:
        await conn.execute("UPDATE people SET status = ?, updated_at = ? WHERE ifs_user = ?",
                           (status.value, self._now(), ifs_user))

    async def set_personal(self, conn: Connection, ifs_users: Iterable[str], on: bool) -> None:
        await conn.executemany("UPDATE people SET personal = ?, updated_at = ? WHERE ifs_user = ?",
                               [(int(on), self._now(), u) for u in ifs_users])

    async def replace_all(self, conn: Connection, people: Iterable[Person]) -> int:
        """Upsert every mapping given (an import); personal chats and preferences already known are kept."""
        n = 0
        for p in people:
            await conn.execute(
                f"INSERT INTO people ({_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (ifs_user) DO UPDATE SET name = excluded.name, aad_object_id = excluded.aad_object_id,"
                " upn = excluded.upn, status = 'active', created_by = excluded.created_by,"
                " updated_at = excluded.updated_at,"
                # the personal chat belongs to the Teams user: kept only while the mapping names the same one
                " teams_id = CASE WHEN people.aad_object_id IS NOT DISTINCT FROM excluded.aad_object_id"
                " THEN people.teams_id END,"
                " conversation_id = CASE WHEN people.aad_object_id IS NOT DISTINCT FROM excluded.aad_object_id"
                " THEN people.conversation_id END",
                (p.ifs_user, p.name, p.aad_object_id, p.upn, p.teams_id, PersonStatus.ACTIVE.value, p.conversation_id,
                 int(p.personal), p.created_by, self._now()))
            n += 1
        return n

    # ------------------------------------------------------------------ personal chats

    async def route_personal(self, *, enabled: bool = True) -> int:
        """Queue personal deliveries for every event since the last call, in batches; returns deliveries queued.

        An event goes to the personal chat of its record's next approver (mapped, confirmed, personal
        notifications on), and to every personal chat that already shows a card for the record, so a
        card is updated in place once the document moves on. The mark only advances, in the same
        transaction as each batch's deliveries: a crash routes the same events again, and the delivery
        idempotency key (event, conversation) keeps that from doubling anything. With no personal chat at
        all, the mark moves past every event without reading one.
        """
        last = int(await self._db.scalar("SELECT value FROM meta WHERE name = ?", (ROUTED_MARK,)) or 0)
        people = await self.active() if enabled else {}
        chats = {p.conversation_id for p in people.values() if p.conversation_id}
        if not chats:
            top = int(await self._db.scalar("SELECT max(id) FROM events") or 0)
            if top > last:
                async with self._db.transaction() as conn:
                    await conn.execute(_SET_MARK, (ROUTED_MARK, str(top)))
            return 0
        queued = 0
        while rows := await self._db.fetchall("SELECT id, record_id, type, record FROM events WHERE id > ?"
                                              " ORDER BY id LIMIT ?", (last, ROUTE_BATCH)):
            shown = await self._shown_in(chats, {row["record_id"] for row in rows})
            now = self._now()
            queue: list[tuple[Any, ...]] = []
            for row in rows:
                targets = set(shown.get(row["record_id"], ()))
                if row["type"] != EventType.RESOLVED.value:
                    who = next_approver(load_record(row["record"]))
                    person = people.get(who) if who else None
                    if person is not None and person.personal and person.conversation_id:
                        targets.add(person.conversation_id)
                queue.extend((row["id"], t, row["record_id"], row["type"], now, now) for t in sorted(targets))
            last = int(rows[-1]["id"])
            async with self._db.transaction() as conn:
                if queue:
                    queued += max((await conn.executemany(QUEUE_DELIVERY, queue)).rowcount, 0)
                await conn.execute(_SET_MARK, (ROUTED_MARK, str(last)))
            if len(rows) < ROUTE_BATCH:
                break
        if queued:
            log.info("queued %d personal deliveries", queued)
        return queued

    async def _shown_in(self, chats: set[str], record_ids: set[str]) -> dict[str, set[str]]:
        """Which of these personal chats show a card of each of these records (a query per 500 records)."""
        shown: dict[str, set[str]] = {}
        ids = sorted(record_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for rid, cid in await self._db.fetchall("SELECT record_id, channel_id FROM cards WHERE record_id IN"
                                                    f" ({','.join('?' * len(chunk))})", tuple(chunk)):
                if cid in chats:
                    shown.setdefault(rid, set()).add(cid)
        return shown

    async def backfill_personal(self, conn: Connection, person: Person) -> int:
        """Queue a personal card for every pending document already waiting for a newly linked approver."""
        if not (person.active and person.personal and person.conversation_id):
            return 0
        async with conn.execute("SELECT e.id, e.record_id, e.record FROM seen s JOIN events e ON e.id = s.event_id"
                                ) as cur:
            rows = [r for r in await cur.fetchall() if next_approver(load_record(r[2])) == person.ifs_user]
        now = self._now()
        cur = await conn.executemany(
            QUEUE_DELIVERY, [(r[0], person.conversation_id, r[1], EventType.NEW.value, now, now) for r in rows])
        return max(cur.rowcount, 0) if rows else 0

    async def waiting_for(self, ifs_users: Iterable[str]) -> list[FinanceRecord]:
        """Pending documents whose next open approval line belongs to one of these IFS users."""
        wanted = set(ifs_users)
        if not wanted:
            return []
        rows = await self._db.fetchall("SELECT e.record FROM seen s JOIN events e ON e.id = s.event_id")
        return [r for r in (load_record(row[0]) for row in rows) if next_approver(r) in wanted]


class Claims:
    """Who took which document; the first claim holds until its holder releases it."""

    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._now = clock.time

    async def get(self, record_id: str) -> Claim | None:
        row = await self._db.fetchone("SELECT record_id, user_id, name, at FROM claims WHERE record_id = ?",
                                      (record_id,))
        return Claim(row[0], row[1], row[2], row[3]) if row else None

    async def claim(self, conn: Connection, record_id: str, user_id: str, name: str) -> Claim:
        """Take the document unless someone holds it; returns the holder either way."""
        await conn.execute("INSERT INTO claims (record_id, user_id, name, at) VALUES (?, ?, ?, ?)"
                           " ON CONFLICT DO NOTHING",
                           (record_id, user_id, name, self._now()))
        async with conn.execute("SELECT record_id, user_id, name, at FROM claims WHERE record_id = ?",
                                (record_id,)) as cur:
            row = await cur.fetchone()
        assert row is not None  # inserted above, or held by someone else: the row exists either way
        return Claim(row[0], row[1], row[2], row[3])

    async def release(self, conn: Connection, record_id: str, user_id: str) -> bool:
        cur = await conn.execute("DELETE FROM claims WHERE record_id = ? AND user_id = ?", (record_id, user_id))
        return cur.rowcount > 0

    async def cards_of(self, record_id: str) -> list[tuple[str, PostedCard]]:
        """Every conversation showing a card of this record, with where the card is."""
        rows = await self._db.fetchall("SELECT channel_id, conversation_id, activity_id FROM cards WHERE record_id = ?"
                                       " ORDER BY channel_id", (record_id,))
        return [(r[0], PostedCard(r[1], r[2])) for r in rows]

    async def latest(self, record_id: str) -> tuple[EventType, FinanceRecord, str | None] | None:
        """The record's latest event (type, record as then, state before): what its cards show."""
        row = await self._db.fetchone("SELECT type, record, previous_state FROM events WHERE record_id = ?"
                                      " ORDER BY id DESC LIMIT 1", (record_id,))
        return (EventType(row[0]), load_record(row[1]), row[2]) if row else None


class ReminderStore:
    """What reminders read (pending documents and since when) and write (snoozes, the last reminder slot)."""

    SLOT = "reminders.last_slot"  # meta row: the last reminder slot sent ("YYYY-MM-DD HH:MM", local)

    def __init__(self, db: Database) -> None:
        self._db = db

    async def pending(self) -> list[tuple[FinanceRecord, float]]:
        """Every pending document with the time it was first seen pending."""
        rows = await self._db.fetchall("SELECT e.record, s.first_seen FROM seen s JOIN events e ON e.id = s.event_id")
        return [(load_record(r[0]), float(r[1])) for r in rows]

    async def snoozed(self, user_id: str, at: float) -> set[str]:
        rows = await self._db.fetchall("SELECT record_id FROM snoozes WHERE user_id = ? AND until > ?",
                                       (user_id, at))
        return {r[0] for r in rows}

    async def snooze(self, conn: Connection, user_id: str, record_id: str, until: float) -> None:
        await conn.execute("INSERT INTO snoozes (user_id, record_id, until) VALUES (?, ?, ?) ON CONFLICT"
                           " (user_id, record_id) DO UPDATE SET until = excluded.until", (user_id, record_id, until))

    async def take_slot(self, slot: str) -> bool:
        """Mark `slot` as sent unless it (or a later one) already was: True for the one caller that sends it.

        Marked before sending, so a crash mid-way skips the rest of a reminder rather than repeating it.
        """
        async with self._db.transaction() as conn:  # one statement: two replicas cannot both take it
            async with conn.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET"
                                    " value = excluded.value WHERE meta.value < excluded.value RETURNING name",
                                    (self.SLOT, slot)) as cur:
                return await cur.fetchone() is not None
