"""Delivery throughput under Teams' limits: 20 channels x 100 cards, digests off, virtual time.

The real path: outbox rows written by PollWriter.apply, the DeliveryWorker, the botbuilder adapter
(TeamsSender through CloudAdapter.continue_conversation) and HTTP to the connector stand-in, which
enforces Teams' limits (per thread 7/1 s, 8/2 s, 60/30 s, 1800/h; per app 50/s) and answers 429 when
they are exceeded. Worker and stand-in share one FakeClock; the worker's sleeps go through
bench.common.VirtualTime, so the run takes as long as the work while the clock shows the time the
limits impose.

`workers=20`: the worker serves at most `settings.workers` channels at once (default 8), each until its
backlog is empty; with 8, channels 9-20 would start only when the first 8 are done, and the run would
measure the size of the worker pool, not the limits. With 20 every channel is served at once, and the
app-wide 50/s becomes a binding limit next to the per-channel windows.
"""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import VirtualTime, bind, goal, log, make_service, rnd
from core.clock import FakeClock
from core.domain import Binding, EventType, FinanceRecord, RecordKind
from core.settings import DeliverySettings
from simulator.connector import TEAMS_APP_PER_SECOND, TEAMS_LIMITS_PER_THREAD, ConnectorStandIn
from store.outbox import Outbox
from store.poll_writer import PollWriter

CHANNELS = 20
PER_CHANNEL = 100
NUMBER = re.compile(r"B(\d\d)N(\d\d\d)")


# --------------------------------------------------------------------------- the ceiling

def _earliest(times: list[float], limits: Sequence[tuple[int, float]], t: float) -> float:
    wait = 0.0
    for n, s in limits:
        if len(times) - bisect_right(times, t - s) >= n:
            wait = max(wait, times[len(times) - n] + s - t)
    return t + wait


def ideal_last_post(channels: int, per_channel: int, channel_limits: Sequence[tuple[int, float]],
                    app_limits: Sequence[tuple[int, float]]) -> float:
    """Time of the last post (first at 0) when every post goes out the moment the windows allow.

    Greedy earliest-admission over all channels; for one channel this is the exact minimum, and for
    20 x 100 it meets the lower bound: 1,200 posts fit before t=30 (60 per channel), the other 800
    need 16 s at 50/s, the last of them at t=45.
    """
    hist: list[list[float]] = [[] for _ in range(channels)]
    app: list[float] = []
    left = [per_channel] * channels
    t = last = 0.0
    for _ in range(channels * per_channel):
        best: tuple[float, int] | None = None
        for c in range(channels):
            if left[c]:
                e = max(_earliest(hist[c], channel_limits, t), _earliest(app, app_limits, t))
                if best is None or e < best[0] - 1e-12 or (abs(e - best[0]) <= 1e-12 and left[c] > left[best[1]]):
                    best = (e, c)
        assert best is not None
        e, c = best
        while (e2 := max(_earliest(hist[c], channel_limits, e), _earliest(app, app_limits, e))) > e:
            e = e2
        hist[c].append(e)
        app.append(e)
        left[c] -= 1
        t = last = e
    return last


# --------------------------------------------------------------------------- records

def channel_id(c: int) -> str:
    return f"19:bench-{c:02d}@thread.tacv2"


def company(c: int) -> str:
    return f"C{c:02d}"


def record(c: int, i: int) -> FinanceRecord:
    co = company(c)
    return FinanceRecord(kind=RecordKind.INVOICE, company=co, key=f"Company={co}^InvoiceId={i}",
                         number=f"B{c:02d}N{i:03d}", state="Preliminary", etag=f'W/"{c}:{i}"',
                         party_id=f"S{i}", party_name=f"Supplier {i}", amount=Decimal(100 + i), currency="EUR",
                         doc_date=date(2026, 11, 1), due_date=date(2026, 12, 1),
                         deep_link=f"https://ifs.example.com/x?c={c}&id={i}")


# --------------------------------------------------------------------------- the rig

class Rig:
    """Service (real adapter, real SQLite) + connector stand-in + worker on one fake clock."""

    def __init__(self, workdir: Path, settings: DeliverySettings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.clock = FakeClock()

    async def __aenter__(self) -> Rig:
        from bot.delivery import DeliveryWorker

        self.connector = ConnectorStandIn(clock=self.clock)
        await self.connector.start()
        # the service is never asked to poll here; any loopback URL satisfies its IFS settings
        self.svc = await make_service(self.workdir, "http://127.0.0.1:9")
        self.vt = VirtualTime(self.clock, self._busy)
        self.worker = DeliveryWorker(
            self.svc.db, self.svc.sender,
            self.svc.rendering.renderer(),
            self.settings, clock=self.clock, sleep=self.vt.sleep,
            rng=random.Random(7))
        self.writer = PollWriter(self.svc.db, self.clock)
        self.outbox = Outbox(self.svc.db, self.clock)
        return self

    def _busy(self) -> int:
        """Channel tasks that hold a worker slot (the worker keeps its running channel tasks in `_active`)."""
        active = sum(1 for t in self.worker._active.values() if not t.done())
        return min(active, max(1, self.settings.workers))

    async def drain(self, max_rounds: int = 100_000) -> int:
        """As tests/test_delivery.py: run_once, then move the clock to the next due delivery."""
        for rounds in range(1, max_rounds + 1):
            await self.worker.run_once()
            due = await self.outbox.next_due_at()
            if due is None:
                return rounds
            if due > self.clock.time():
                self.clock.advance(due - self.clock.time())
        raise RuntimeError("outbox did not drain")

    async def __aexit__(self, *exc: object) -> None:
        await self.svc.stop()
        await self.svc.db.close()
        await self.connector.stop()


async def measure(workdir: Path) -> dict[str, Any]:
    settings = DeliverySettings(digest_threshold=10**9, workers=CHANNELS)
    async with Rig(workdir, settings) as rig:
        for c in range(CHANNELS):
            await bind(rig.svc.db, channel_id(c), rig.connector.service_url, company(c))
        for c in range(CHANNELS):
            await rig.writer.apply(RecordKind.INVOICE, company(c),
                                   [(EventType.NEW, record(c, i).to_dict(), None, "") for i in range(PER_CHANNEL)],
                                   [Binding(channel_id(c), company(c))])
        log(f"delivery: {CHANNELS} channels x {PER_CHANNEL} cards")
        start_mono = rig.clock.monotonic()
        t = time.perf_counter()
        rounds = await rig.drain()
        wall = time.perf_counter() - t
        end_mono = rig.clock.monotonic()

        posts = rig.connector.posts()
        per_channel: dict[str, list[float]] = {}
        seen: Counter[tuple[str, str]] = Counter()
        for p in posts:
            per_channel.setdefault(p.channel_id, []).append(p.at - start_mono)
            m = NUMBER.search(str(p.activity))
            seen[(p.channel_id, m.group(0) if m else "?")] += 1
        expected = {(channel_id(c), f"B{c:02d}N{i:03d}") for c in range(CHANNELS) for i in range(PER_CHANNEL)}
        lost = len(expected - set(seen))
        duplicated = sum(n - 1 for n in seen.values() if n > 1) + sum(n for k, n in seen.items() if k not in expected)
        counts = await rig.outbox.counts()
        rejected = Counter(r.status for r in rig.connector.rejected)
        last_post = max(p.at for p in posts) - start_mono if posts else float("nan")
        channel_spans = sorted(max(v) for v in per_channel.values())
        return {
            "wall_seconds": wall, "simulated_seconds": end_mono - start_mono, "last_post_at": last_post,
            "channel_last_post_at": channel_spans, "posts": len(posts), "lost": lost, "duplicated": duplicated,
            "throttled_429": rig.connector.throttled, "rejected": dict(rejected), "outbox": counts,
            "rounds": rounds, "worker_slept_seconds": rig.vt.slept,
        }


def run(*, quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        m = asyncio.run(measure(Path(tmp)))
    app_limits = ((TEAMS_APP_PER_SECOND, 1.0),)
    one = ideal_last_post(1, PER_CHANNEL, TEAMS_LIMITS_PER_THREAD, app_limits)
    everything = ideal_last_post(CHANNELS, PER_CHANNEL, TEAMS_LIMITS_PER_THREAD, app_limits)
    spans = m["channel_last_post_at"]
    share = everything / m["last_post_at"] if m["last_post_at"] > 0 else float("nan")
    return {
        "channels": CHANNELS, "cards_per_channel": PER_CHANNEL, "digest_threshold": 10**9, "workers": CHANNELS,
        "workers_note": "workers = channels, so every channel is served at once (default 8 would serialise them)",
        "posts": m["posts"],
        "simulated_seconds": rnd(m["simulated_seconds"]),
        "last_post_at_seconds": rnd(m["last_post_at"]),
        "ideal_last_post_one_channel_seconds": rnd(one),
        "ideal_last_post_one_channel_note": ("100 posts in one thread under 7/1 s, 8/2 s, 60/30 s: 60 by t=14, "
                                             "then the 30 s window holds the rest until t=30, 40 more at 4/s"),
        "ideal_last_post_all_channels_seconds": rnd(everything),
        "ideal_last_post_all_channels_note": ("20 x 100 with the app's 50/s as well: 1,200 posts before t=30 "
                                              "(60 per channel), the other 800 at 50/s"),
        "channel_last_post_seconds": {"min": rnd(spans[0]), "median": rnd(spans[len(spans) // 2]),
                                      "max": rnd(spans[-1])},
        "share_of_ceiling": goal(rnd(share, 3), 0.9, ">="),
        "throughput_posts_per_second": rnd(m["posts"] / m["last_post_at"], 2),
        "throttled_429": goal(m["throttled_429"], 0, "=="),
        "rejected_by_status": m["rejected"],
        "lost": goal(m["lost"], 0, "=="),
        "duplicated": goal(m["duplicated"], 0, "=="),
        "outbox_after": m["outbox"],
        "wall_seconds": rnd(m["wall_seconds"]),
        "wall_ms_per_post": rnd(1000 * m["wall_seconds"] / max(1, m["posts"]), 2),
        "drain_rounds": m["rounds"],
    }
