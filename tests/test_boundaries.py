"""Tests for the one reach past aiosqlite's public API, that nothing else reaches past a library's, and that
SQL stays in the store."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from store import _aiosqlite_adapter
from store.db import open_database

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", "build", "var", ".git", "node_modules"}

# private attributes of third-party libraries, and the one module allowed to use each group
PRIVATE = {
    "store/_aiosqlite_adapter.py": r"\.(_tx|_conn|_running|_connection|_connector|_execute\w*|_thread)\b",
    # botbuilder's adapter module (the only one importing botbuilder): its signing-key cache refresh
    "bot/teams.py": r"\b(metadata|JwtTokenExtractor|ChannelValidation|CloudAdapter|adapter)\._[a-z]\w*",
}


def test_installed_aiosqlite_is_the_version_the_adapter_was_written_for():
    installed = version("aiosqlite")
    assert installed == _aiosqlite_adapter.WRITTEN_FOR, (
        f"aiosqlite {installed} is installed, store/_aiosqlite_adapter.py was written for "
        f"{_aiosqlite_adapter.WRITTEN_FOR}: re-read aiosqlite/core.py (_tx, _running, _connection, _conn) "
        "and update the adapter and WRITTEN_FOR together")


def _sources():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if SKIP_DIRS.intersection(rel.parts) or rel == Path(__file__).relative_to(ROOT):
            continue
        yield rel.as_posix(), path.read_text(encoding="utf-8")


def test_no_private_attribute_of_a_library_outside_its_adapter():
    found = []
    for rel, text in _sources():
        for owner, pattern in PRIVATE.items():
            if rel == owner:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                # our own objects' privates (self._x) are not a library's
                if re.search(pattern, line.replace("self.", "self_")):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "library privates outside their adapter module:\n" + "\n".join(found)


async def test_enqueue_runs_on_the_database_thread_and_refuses_a_closed_connection(tmp_path):
    db = await open_database(str(tmp_path / "a.sqlite3"))
    try:
        assert await _aiosqlite_adapter.enqueue(db.conn, lambda raw: raw.execute("SELECT 41 + 1").fetchone()[0]) == 42
    finally:
        await db.close()
    with pytest.raises(ValueError):
        _aiosqlite_adapter.enqueue(db.conn, lambda raw: None)


def test_sql_is_written_only_in_the_store():
    """The store owns the driver and the SQL: no statement, transaction or driver call elsewhere (tests aside);
    writes go through a unit of work (`Store.unit()`)."""
    pattern = re.compile(r"\b(?:\w*db|conn|cur|cursor)\.(?:fetchone|fetchall|scalar|execute\w*|transaction)\("
                         r"|\.run_(?:read|transaction)\(")
    found = []
    for rel, text in _sources():
        if rel.startswith(("store/", "tests/")):
            continue
        found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not found, "SQL or driver calls outside store/:\n" + "\n".join(found)
