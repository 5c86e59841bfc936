"""Shared fixtures: the IFS simulator, the Bot Connector stand-in and a fully wired service, all on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import load_settings
from simulator.connector import ConnectorStandIn
from simulator.ifs import IfsSimulator
from simulator.teams_client import BOT_ID, CHANNEL, TEAM, TENANT, channel_message, event_activity  # noqa: F401


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


IFS_SECRETS = {"ifs.client_id": "notifier", "ifs.client_secret": "notifier-secret"}


def write_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "notifier.toml"
    cfg.write_text(f"""
[service]
host = "127.0.0.1"
port = 0
database = "{tmp_path / 'notifier.sqlite3'}"
key_file = "{tmp_path / 'master.key'}"
dev_mode = true
timezone = "Europe/Stockholm"

[ifs]
realm = "ifs"
page_size = 500
retry_attempts = 3
retry_max_seconds = 5
{extra}
""")
    return cfg


async def make_service(tmp_path: Path, ifs_url: str, *, extra: str = ""):
    """A wired service against the simulator's default client (what `serve` builds, in development mode)."""
    import app

    settings = load_settings(write_config(tmp_path, extra), env={})
    return await app.build_service(settings, IFS_SECRETS | {"ifs.base_url": ifs_url})


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
