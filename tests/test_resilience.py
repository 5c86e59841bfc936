"""Crash safety: SIGKILL the real service at seeded random points of polling and delivery, then restart it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

from core.domain import Binding, ChannelRef
from core.settings import load_settings
from simulator.connector import ConnectorStandIn
from store.bindings import Bindings
from store.channels import Channels

ROOT = Path(__file__).resolve().parent.parent
CH = "19:crash@thread.tacv2"
TRIALS = 20


async def wait_until(predicate, limit: float) -> bool:
    """Bounded wait for something another process does; the answer, not the time, is what tests check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


async def prepare(tmp_path: Path, ifs, connector) -> Path:
    import app

    cfg = tmp_path / "crash.toml"
    cfg.write_text(f"""
[service]
port = 0
database = "{tmp_path / 'crash.sqlite3'}"
key_file = "{tmp_path / 'crash.key'}"
dev_mode = true
[ifs]
realm = "ifs"
retry_attempts = 2
[schedule]
every_minutes = 0.01
[delivery]
digest_threshold = 100000
""")
    settings = load_settings(cfg, env={})
    db, vault = await app.open_store(settings)
    await vault.set("ifs.base_url", ifs.base_url)
    await vault.set("ifs.client_id", "notifier")
    await vault.set("ifs.client_secret", "notifier-secret")
    async with db.transaction() as conn:
        await Channels(db).upsert(conn, ChannelRef(CH, "tenant", "team", connector.service_url, reference={
            "channelId": "msteams", "serviceUrl": connector.service_url, "bot": {"id": "28:bot"},
            "conversation": {"id": CH, "isGroup": True, "conversationType": "channel"}}))
        await Bindings(db).put(conn, Binding(CH, "10"))
    await db.close()
    return cfg


async def start(cfg: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER")}
    return await asyncio.create_subprocess_exec(sys.executable, "app.py", "--config", str(cfg), "serve", cwd=ROOT,
                                                env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)


async def test_sigkill_at_random_points_loses_nothing_and_duplicates_at_most_once_per_kill(tmp_path, ifs):
    rng = random.Random(20261127)
    connector = ConnectorStandIn()
    await connector.start()
    try:
        cfg = await prepare(tmp_path, ifs, connector)
        expected: set[str] = set()
        for _ in range(10):
            expected.add(ifs.add_order(company="10")["OrderNo"])

        def delivered() -> list[str]:
            return [p.activity["attachments"][0]["content"].get("fallbackText", "") for p in connector.posts(CH)]

        kills = 0
        for _trial in range(TRIALS):
            for _ in range(rng.randint(0, 3)):
                expected.add(ifs.add_order(company="10")["OrderNo"])
            proc = await start(cfg)
            text = "\n".join(delivered())
            undelivered = [no for no in expected if no not in text]
            if rng.random() < 0.5 or not undelivered:  # in a poll: after the k-th data request of this run
                base = len(ifs.requests)
                k = rng.randint(1, 4)
                await wait_until(lambda b=base, k=k: len(ifs.requests) >= b + k, 20)
            else:  # somewhere in delivery: after the k-th accepted post of this run
                base = len(connector.posts(CH))
                k = rng.randint(1, min(3, len(undelivered)))
                await wait_until(lambda b=base, k=k: len(connector.posts(CH)) >= b + k, 20)
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await proc.wait()

        proc = await start(cfg)
        try:
            def all_there() -> bool:
                text = "\n".join(delivered())
                return all(no in text for no in expected)

            assert await wait_until(all_there, 60), "not every order reached the channel"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        texts = delivered()
        per_order = {no: sum(no in t for t in texts) for no in expected}
        duplicates = sum(n - 1 for n in per_order.values())
        assert min(per_order.values()) >= 1
        assert duplicates <= kills, (duplicates, kills)
    finally:
        await connector.stop()
