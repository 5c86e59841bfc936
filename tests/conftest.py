"""Shared fixtures: the IFS simulator, the Bot Connector stand-in and a fully wired service, all on 127.0.0.1."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server for the whole run (started on first use); skips without its binaries."""
    if find_binaries() is None:
        pytest.skip(NOT_INSTALLED)
    server = PostgresServer().start()
    yield server
    server.stop()


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


def write_config(tmp_path: Path, extra: str = "") -> Path:
    return bench.common.write_config(tmp_path, extra, service=TEST_SERVICE, ifs=TEST_IFS)


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
