"""Shared fixtures: the IFS simulator, the Bot Connector stand-in and a fully wired service, all on 127.0.0.1."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

import bench.common
from bench.common import IFS_SECRETS, service_from  # noqa: F401  (IFS_SECRETS: for the tests)
from simulator.connector import ConnectorStandIn
from simulator.ifs import IfsSimulator
from simulator.postgres import NOT_INSTALLED, PostgresServer, find_binaries
from simulator.teams_client import BOT_ID, CHANNEL, TEAM, TENANT, channel_message, event_activity  # noqa: F401
from store.db import open_database


@pytest.fixture
async def ifs():
    sim = IfsSimulator()
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def connector():
    stand_in = ConnectorStandIn()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


# NOTIFIER_TEST_STORE=postgresql (make test-pg): every service the tests build keeps its store in a fresh
# PostgreSQL database instead of a SQLite file; the tests about SQLite's files skip (`sqlite_only`).
TEST_STORE = os.environ.get("NOTIFIER_TEST_STORE", "sqlite")
if TEST_STORE not in ("sqlite", "postgresql"):
    raise pytest.UsageError(f"NOTIFIER_TEST_STORE={TEST_STORE!r}: expected sqlite or postgresql")
ON_POSTGRESQL = TEST_STORE == "postgresql"
sqlite_only = pytest.mark.skipif(ON_POSTGRESQL, reason="about the SQLite file (its modes, corruption, disk space,"
                                                       " the backup command); NOTIFIER_TEST_STORE=postgresql")
_server: PostgresServer | None = None
_databases: dict[Path, str] = {}  # a workdir's database: the same one each time its config is written


def shared_pg_server() -> PostgresServer:
    """The run's PostgreSQL server, started on first use (stopped at the end of the session)."""
    global _server
    if _server is None:
        if find_binaries() is None:
            if ON_POSTGRESQL:
                raise RuntimeError(f"NOTIFIER_TEST_STORE=postgresql: {NOT_INSTALLED}")
            pytest.skip(NOT_INSTALLED)
        _server = PostgresServer().start()
    return _server


@pytest.fixture(scope="session", autouse=True)
def _stop_pg_server():
    yield
    if _server is not None:
        _server.stop()


@pytest.fixture
def pg_server() -> PostgresServer:
    """The run's throwaway PostgreSQL server; the test skips when no server binaries are installed."""
    return shared_pg_server()


@pytest.fixture
def database_url(pg_server) -> str:
    """A new, empty PostgreSQL database for one test."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request, tmp_path) -> str:
    """What `service.database` would say, once per back end: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return request.getfixturevalue("database_url")


@pytest.fixture
async def db(store_target):
    """An opened, migrated database, on each back end in turn (tests using it run twice)."""
    database = await open_database(store_target)
    yield database
    await database.close()


TEST_SERVICE = 'timezone = "Europe/Stockholm"'
TEST_IFS = "page_size = 500\nretry_attempts = 3\nretry_max_seconds = 5"


def new_database(path: Path) -> str:
    """A database for one test: the SQLite file `path`, or a fresh PostgreSQL database under
    NOTIFIER_TEST_STORE=postgresql."""
    return shared_pg_server().new_database() if ON_POSTGRESQL else str(path)


def database_of(workdir: Path) -> str:
    """What `service.database` says in the config write_config wrote for `workdir`."""
    return _databases.get(workdir) or str(workdir / "notifier.sqlite3")


def write_config(tmp_path: Path, extra: str = "") -> Path:
    database = None
    if ON_POSTGRESQL:
        database = _databases.get(tmp_path) or _databases.setdefault(tmp_path, shared_pg_server().new_database())
    return bench.common.write_config(tmp_path, extra, service=TEST_SERVICE, ifs=TEST_IFS, database=database)


async def make_service(tmp_path: Path, ifs_url: str, *, extra: str = ""):
    """A wired service against the simulator's default client (what `serve` builds, in development mode)."""
    return await service_from(write_config(tmp_path, extra), ifs_url)


@pytest.fixture
async def service_factory(tmp_path, ifs):
    made = []

    async def factory(extra: str = "", start: bool = True):
        svc = await make_service(tmp_path, ifs.base_url, extra=extra)
        if start:
            await svc.start(background=False)
        made.append(svc)
        return svc

    yield factory
    for svc in made:
        await svc.stop()
        await svc.db.close()


async def post_activity(base_url: str, activity: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{base_url}/api/messages", json=activity, headers=headers or {})
        return resp.status_code


def replies_text(connector: ConnectorStandIn, channel: str = CHANNEL) -> list[str]:
    """Texts (or card fallback texts) of the bot's replies to commands in a channel."""
    out = []
    for a in connector.accepted:
        if a.channel_id != channel or a.op not in ("reply", "send"):
            continue
        act = a.activity
        if act.get("text"):
            out.append(act["text"])
        for att in act.get("attachments") or []:
            content = att.get("content") or {}
            out.append(content.get("fallbackText") or str(content))
    return out


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A store a failed test left open keeps its database thread, which is not a daemon thread, alive (pytest
    keeps the failure's traceback, and with it the connection): the interpreter would wait for it at exit,
    forever. The report is written by now; leave with its status instead."""
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck and _EXIT_STATUS:
        print(f"\n(threads still running at the end: {', '.join(stuck)}; exiting without waiting for them)",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])

