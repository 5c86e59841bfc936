"""Real `serve` processes for the crash and fail-over tests: their config, their store, starting them, waiting."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def wait_until(predicate, limit: float = 10.0, step: float = 0.005) -> bool:
    """Bounded wait for what another task or process does; the answer, not the time, is what the tests check.
    The predicate may be async (a database query): then it is asked every 20 ms at the most."""
    async def check() -> bool:
        nonlocal step
        answer = predicate()
        if inspect.isawaitable(answer):
            step = max(step, 0.02)
            return bool(await answer)
        return bool(answer)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(step)
    return await check()


async def prepare_serve(tmp_path: Path, name: str, database: str, ifs, connector, channels: Sequence[str], *,
                        service: str = "", delivery: str = "") -> Path:
    """A config for `serve` polling the IFS simulator every 0.6 s (the one config writer's, in
    `tmp_path/name`), its vault holding the simulator's credentials, and `channels` each linked to company
    10 at the connector stand-in. Returns the config."""
    import app
    from bench.common import bind, write_config
    from core.settings import load_settings

    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    cfg = write_config(workdir, "[schedule]\nevery_minutes = 0.01\n[delivery]\ndigest_threshold = 100000\n" + delivery,
                       service='log_level = "WARNING"\n' + service, ifs="retry_attempts = 2", database=database)
    db, vault = await app.open_store(load_settings(cfg, env={}))
    try:
        for key, value in ifs.vault_secrets().items():
            await vault.set(key, value)
        for ch in channels:
            await bind(db, ch, connector.service_url)
    finally:
        await db.close()
    return cfg


async def start_serve(cfg: Path, env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    """`python app.py serve` with this config only (no NOTIFIER* variables of the caller's), output dropped."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "app.py", "--config", str(cfg), "serve", cwd=ROOT, env={**clean, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
