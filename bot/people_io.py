"""Bulk import and export of people (IFS user -> Teams user) as CSV: ifs_user, Entra object id or UPN, name."""

from __future__ import annotations

import csv
import io
import re

from cards.text import clean
from core.errors import NotifierError
from core.people import Person, ifs_user_key, valid_ifs_user
from store.db import Database
from store.people import People
from store.unit import Store

HEADER = ("ifs_user", "teams_user", "name")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_UPN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_ROWS = 100_000


class PeopleFileError(NotifierError):
    """A people CSV that cannot be imported; nothing was written."""


def parse_people(text: str, *, actor: str) -> list[Person]:
    """Every row checked before anything is written: one bad row refuses the whole file."""
    rows = list(csv.reader(io.StringIO(text)))
    out: dict[str, Person] = {}
    for number, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if number == 1 and cells and cells[0].lower() in ("ifs_user", "ifs user"):
            continue  # a header line
        where = f"line {number}"
        if len(cells) != 3:
            raise PeopleFileError(f"{where}: expected 3 columns (ifs_user, Entra object id or UPN, name),"
                                  f" found {len(cells)}")
        user, teams, name = ifs_user_key(cells[0]), cells[1], clean(cells[2])[:100]
        if not valid_ifs_user(user):
            raise PeopleFileError(f"{where}: '{cells[0][:40]}' is not an IFS user id")
        if not (_GUID.match(teams) or _UPN.match(teams)):
            raise PeopleFileError(f"{where}: '{teams[:60]}' is neither an Entra object id nor a UPN")
        if not name:
            raise PeopleFileError(f"{where}: the name is empty")
        if user in out:
            raise PeopleFileError(f"{where}: IFS user {user} appears twice")
        if len(out) >= MAX_ROWS:
            raise PeopleFileError(f"more than {MAX_ROWS} people")
        guid = teams.lower() if _GUID.match(teams) else None
        out[user] = Person(ifs_user=user, name=name, aad_object_id=guid, upn=None if guid else teams,
                           created_by=actor)
    return list(out.values())


async def import_people(db: Database, text: str, *, actor: str) -> int:
    people = parse_people(text, actor=actor)
    async with Store(db).unit() as u:
        n = await u.people.replace_all(people)
        await u.audit.add("people", "people imported", "ok", actor=actor, count=n,
                          ifs_users=[p.ifs_user for p in people[:100]])
    return n


async def export_people(db: Database) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for p in await People(db).all():
        if p.active and (p.aad_object_id or p.upn):
            writer.writerow((p.ifs_user, p.aad_object_id or p.upn, p.name))
    return buffer.getvalue()
