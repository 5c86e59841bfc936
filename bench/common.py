"""Shared pieces: machine facts, peak RSS, goals, progress lines, a wired Service, virtual time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from core.clock import FakeClock

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "peak_rss_mb": peak_rss_mb(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


# --------------------------------------------------------------------------- reporting

def log(message: str) -> None:
    """Human progress, on stderr (stdout carries only the JSON summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def goal(value: float | int | None, target: float | int, op: str = "<=", unit: str = "") -> dict[str, Any]:
    """A measured number next to its goal, with pass/fail."""
    ops: dict[str, Callable[[float, float], bool]] = {
        "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "==": lambda a, b: a == b,
    }
    ok = value is not None and ops[op](value, target)
    out: dict[str, Any] = {"value": value, "goal": f"{op} {target}{(' ' + unit) if unit else ''}",
                           "pass": bool(ok)}
    return out


def rnd(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --------------------------------------------------------------------------- a wired service

IFS_SECRETS = {"ifs.client_id": "notifier", "ifs.client_secret": "notifier-secret"}  # the simulator's default client


def write_config(workdir: Path, extra: str = "", *, service: str = 'timezone = "UTC"\nlog_level = "WARNING"',
                 ifs: str = "", database: str | None = None) -> Path:
    """The settings file of a development-mode service on 127.0.0.1 with its files in `workdir`; `service`
    and `ifs` are more keys of those sections, `extra` more sections; `database` another store than the
    SQLite file in `workdir` (a PostgreSQL URL). The one writer, for the tests too."""
    cfg = workdir / "notifier.toml"
    cfg.write_text(f"""
[service]
host = "127.0.0.1"
port = 0
database = "{database or workdir / 'notifier.sqlite3'}"
key_file = "{workdir / 'master.key'}"
dev_mode = true
{service}

[ifs]
realm = "ifs"
{ifs}
{extra}
""")
    return cfg


async def service_from(config: Path, ifs_url: str):
    """An app.Service as `python app.py serve` builds it from `config` (dev mode: bot auth off, loopback only),
    against the IFS simulator at `ifs_url` with its default client."""
    import app
    from core.settings import load_settings

    settings = load_settings(config, env={})
    return await app.build_service(settings, IFS_SECRETS | {"ifs.base_url": ifs_url})


async def make_service(workdir: Path, ifs_url: str, *, extra: str = "", service: str | None = None,
                       database: str | None = None):
    kw = {} if service is None else {"service": service}
    return await service_from(write_config(workdir, extra, database=database, **kw), ifs_url)


def channel_ref(channel_id: str, service_url: str, team: str = "team-1"):
    from core.domain import ChannelRef

    return ChannelRef(channel_id, "tenant", team, service_url, reference={
        "channelId": "msteams", "serviceUrl": service_url, "bot": {"id": "28:bot"},
        "conversation": {"id": channel_id, "isGroup": True, "conversationType": "channel", "tenantId": "tenant"}})


async def bind(db, channel_id: str, service_url: str, company: str = "10") -> None:
    from core.domain import Binding
    from store.unit import Store

    async with Store(db).unit() as u:
        await u.channels.upsert(channel_ref(channel_id, service_url))
        await u.bindings.put(Binding(channel_id, company))


# --------------------------------------------------------------------------- IFS simulator process

@contextmanager
def ifs_server(orders: int, invoices: int, vouchers: int, company: str = "10") -> Iterator[str]:
    """Run bench.ifs_server in a child process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ifs_server", "--orders", str(orders), "--invoices", str(invoices),
         "--vouchers", str(vouchers), "--company", company],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the IFS simulator process did not start")
        yield json.loads(line)["base_url"]
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)


async def sim_stats(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{base_url}/_sim/stats", timeout=60)).json()


# --------------------------------------------------------------------------- virtual time

class VirtualTime:
    """Simulated time for a worker that serves several channels at once.

    The DeliveryWorker sleeps through an injected `sleep`; with a plain "advance the clock by what you
    sleep" fake, 20 channels sleeping 1 s each would move the clock 20 s. Here a sleeper registers its
    wake-up time and the clock jumps to the earliest one only once every busy channel task is asleep
    (the others are still posting or writing SQLite), so simulated time is what a real clock would show
    if the work took no time, and the run takes as long as the work, not the waiting.
    """

    def __init__(self, clock: FakeClock, busy: Callable[[], int]) -> None:
        self.clock = clock
        self._busy = busy
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.slept = 0.0

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self.slept += seconds
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.clock.monotonic() + seconds, next(self._seq), fut))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._advance())
        await fut

    async def _advance(self) -> None:
        while self._heap:
            await asyncio.sleep(0.0005)  # real time: let running tasks reach their next await
            if len(self._heap) < self._busy():
                continue
            target = self._heap[0][0]
            if target > self.clock.monotonic():
                self.clock.advance(target - self.clock.monotonic())
            while self._heap and self._heap[0][0] <= self.clock.monotonic() + 1e-9:
                _, _, fut = heapq.heappop(self._heap)
                if not fut.done():
                    fut.set_result(None)
