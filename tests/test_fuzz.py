"""Property-based fuzzing: any OData row maps or is refused as a bad record; any command text gets a reply."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.authz import Actor, AdminPolicy
from bot.commands import REGISTRY
from core.domain import FinanceRecord, RecordKind
from core.errors import BadRecordError
from pollers.sources import DEFAULT_SOURCES, RecordMapper
from store.repos import load_record

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(["2026-11-27", "2026-13-45", "Planned", "1e400", "NaN", "-0", "W/\"x\""]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))


def row_for(kind: RecordKind):
    spec = DEFAULT_SOURCES[kind]
    fields = list(spec.select) + ["@odata.etag", "Objversion"]
    return st.dictionaries(st.sampled_from(fields), VALUES, max_size=len(fields))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(RecordKind)), data=st.data())
def test_any_row_maps_or_is_a_bad_record(kind, data):
    row: dict[str, Any] = data.draw(row_for(kind))
    mapper = RecordMapper(DEFAULT_SOURCES[kind], "https://ifs.example.com")
    try:
        key, etag, keys = mapper.key_and_etag(row)
        stored = mapper.stored(row, key, etag)
    except BadRecordError as exc:
        assert exc.field and exc.problem
        return
    # the mapper's stored form is exactly FinanceRecord's, and survives the trip through JSON
    record = FinanceRecord.from_dict(stored)
    assert record.to_dict() == stored
    assert load_record(orjson.dumps(stored)) == record == mapper.map(row, key, etag)


class OfflineRuntime:
    """The service's runtime as commands see it, with IFS out of reach."""

    async def check_company(self, company: str):
        from bot.commands import CompanyCheck
        return CompanyCheck(False, error="IFS is not reachable from this test")

    def next_runs(self):
        return {}

    def ifs_token_state(self):
        return {"valid": False}

    def poll_soon(self):
        pass

    def wake_delivery(self):
        pass

    def card_context(self):
        from datetime import date

        from cards import CardContext
        return CardContext(today=date(2026, 11, 27))


WORDS = st.sampled_from([*REGISTRY, "company", "all", "failed", "kinds", "costcenter", "min", "10", "-1", "",
                         "<at>IFS</at>", "invoices,orders", "1e9", "💸", "'; DROP TABLE bindings; --"])
TEXTS = st.one_of(st.text(max_size=80), st.lists(WORDS, max_size=8).map(" ".join))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=5))
def test_any_command_text_gets_a_reply_and_an_audit_row(texts):
    from bot.commands import Commands
    from store.db import open_database

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            db = await open_database(str(Path(tmp) / "f.sqlite3"))
            try:
                cmds = Commands(db, OfflineRuntime(), AdminPolicy([]))
                for text in texts:
                    before = await db.scalar("SELECT count(*) FROM audit")
                    reply = await cmds.run("19:fuzz@thread.tacv2", Actor("29:u", "aad-u", "U"), text)
                    assert reply.text
                    assert await db.scalar("SELECT count(*) FROM audit") > before
                assert await db.scalar("SELECT count(*) FROM bindings") == 0  # IFS never confirmed a company
            finally:
                await db.close()

    asyncio.run(run())
