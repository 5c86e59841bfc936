"""Delivery by two replicas under Teams' limits: 20 channels x 100 cards, digests off, virtual time.

Two services (each its own database connections, as two processes have) on one database: PostgreSQL
when its server binaries are installed (simulator.postgres), else one SQLite file (the two workers then
share one connection). Each has a
DeliveryWorker with SharedPacing: a channel is delivered by the replica holding its lease, and the
app-wide 50/s is split between the live replicas. Both talk to one connector stand-in, which enforces
Teams' limits (per thread 7/1 s, 8/2 s, 60/30 s, 1800/h; per app 50/s) for the app as a whole and
answers 429 when they are exceeded. Workers, stand-in and leases share one FakeClock; the workers'
sleeps and the replicas' heartbeats go through bench.common.VirtualTime.

The ceiling is bench.delivery's: every post out the moment the windows allow (45 s for 20 x 100).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.common import VirtualTime, bind, goal, log, make_service, rnd
from bench.delivery import NUMBER, channel_id, company, ideal_last_post, record
from core.clock import FakeClock
from core.domain import Binding, EventType, RecordKind
from core.settings import DeliverySettings
from simulator.connector import TEAMS_APP_PER_SECOND, TEAMS_LIMITS_PER_THREAD, ConnectorStandIn
from simulator.postgres import PostgresServer, find_binaries
from store.leader import Timing
from store.outbox import Outbox
from store.poll_writer import PollWriter

CHANNELS = 20
PER_CHANNEL = 100
REPLICAS = ("replica-a", "replica-b")


@asynccontextmanager
async def database(workdir: Path, backend: str) -> AsyncIterator[str | None]:
    """The database URL both replicas use (None: a SQLite file of each service's own folder, made shared)."""
    if backend == "postgresql":
        server = PostgresServer()
        await asyncio.to_thread(server.start)
        try:
            yield server.new_database()
        finally:
            await asyncio.to_thread(server.stop)
    else:
        yield str(workdir / "shared.sqlite3")


def default_backend() -> str:
    try:
        import store.pg  # noqa: F401  (the PostgreSQL back end)
    except ImportError:
        return "sqlite"
    return "postgresql" if find_binaries() is not None else "sqlite"


async def measure(workdir: Path, *, channels: int = CHANNELS, per_channel: int = PER_CHANNEL,
                  backend: str = "sqlite", takeover: float = 15.0, naive: bool = False) -> dict[str, Any]:
    """`naive`: each replica paces on its own (SoloPacing), as if it were the only one: the control."""
    from bot.delivery import DeliveryWorker, SharedPacing, SoloPacing

    clock = FakeClock()
    settings = DeliverySettings(digest_threshold=10**9, workers=channels)
    timing = Timing(takeover)
    connector = ConnectorStandIn(clock=clock)
    await connector.start()
    services: list[Any] = []
    try:
        async with database(workdir, backend) as url:
            try:
                for name in REPLICAS:
                    folder = workdir / name
                    folder.mkdir(exist_ok=True)
                    if services:  # replicas share the vault's key, as they share the database
                        shutil.copy2(workdir / REPLICAS[0] / "master.key", folder / "master.key")
                    services.append(await make_service(folder, "http://127.0.0.1:9", database=url, service=(
                        f'timezone = "UTC"\nlog_level = "WARNING"\nreplica_name = "{name}"\n'
                        f"leader_takeover_seconds = {takeover}")))
                workers: list[DeliveryWorker] = []
                pacings: list[SharedPacing] = []
                beats: list[asyncio.Task[None]] = []

                def busy() -> int:
                    active = sum(1 for w in workers for t in w._active.values() if not t.done())
                    return active + len(beats)

                vt = VirtualTime(clock, busy)
                for name, svc in zip(REPLICAS, services, strict=True):
                    # on SQLite the two workers share one connection (SQLite serves one process; this measures
                    # the leases and the pacing, not SQLite's locking between processes)
                    db = svc.db if backend == "postgresql" else services[0].db
                    pacing: SharedPacing | SoloPacing
                    if naive:
                        pacing = SoloPacing()
                    else:
                        pacing = SharedPacing(db, name, timing, clock=clock, sleep=vt.sleep)
                        pacings.append(pacing)
                    workers.append(DeliveryWorker(db, svc.sender, svc.rendering.renderer(), settings, clock=clock,
                                                  sleep=vt.sleep, rng=random.Random(7), pacing=pacing))
                db = services[0].db
                writer, outbox = PollWriter(db, clock), Outbox(db, clock)
                for c in range(channels):
                    await bind(db, channel_id(c), connector.service_url, company(c))
                for c in range(channels):
                    await writer.apply(RecordKind.INVOICE, company(c),
                                       [(EventType.NEW, record(c, i).to_dict(), None, "") for i in range(per_channel)],
                                       [Binding(channel_id(c), company(c))])
                for p in pacings:  # both alive, and seen alive by the other, before either delivers
                    await p.beat()
                clock.advance(2 * timing.heartbeat_every)
                for p in pacings:
                    await p.beat()
                beats.extend(asyncio.ensure_future(p.run()) for p in pacings)
                log(f"replicas: {len(REPLICAS)} replicas on {backend}, {channels} channels x {per_channel} cards")
                start_mono = clock.monotonic()
                t = time.perf_counter()
                settled = Counter[str]()
                rounds = 0
                try:
                    while True:
                        rounds += 1
                        done = await asyncio.gather(*(w.run_once() for w in workers))
                        for name, n in zip(REPLICAS, done, strict=True):
                            settled[name] += n
                        due = await outbox.next_due_at()
                        if due is None:
                            break
                        if due > clock.time():
                            clock.advance(due - clock.time())
                        elif not any(done):  # due work held elsewhere (a lease running out): let time pass
                            await vt.sleep(timing.heartbeat_every)
                        if rounds > 100_000:
                            raise RuntimeError("outbox did not drain")
                finally:
                    for b in beats:
                        b.cancel()
                    await asyncio.gather(*beats, return_exceptions=True)
                wall = time.perf_counter() - t
                posts = connector.posts()
                seen: Counter[tuple[str, str]] = Counter()
                per_channel_last: dict[str, float] = {}
                for p in posts:
                    m = NUMBER.search(str(p.activity))
                    seen[(p.channel_id, m.group(0) if m else "?")] += 1
                    per_channel_last[p.channel_id] = max(per_channel_last.get(p.channel_id, 0.0), p.at - start_mono)
                expected = {(channel_id(c), f"B{c:02d}N{i:03d}") for c in range(channels) for i in range(per_channel)}
                return {
                    "backend": backend, "wall_seconds": wall, "simulated_seconds": clock.monotonic() - start_mono,
                    "last_post_at": max(p.at for p in posts) - start_mono if posts else float("nan"),
                    "posts": len(posts), "lost": len(expected - set(seen)),
                    "duplicated": sum(n - 1 for n in seen.values() if n > 1) + sum(
                        n for k, n in seen.items() if k not in expected),
                    "throttled_429": connector.throttled, "rejected": dict(Counter(r.status for r in connector.rejected)),
                    "settled_by_replica": dict(settled), "outbox": await outbox.counts(), "rounds": rounds,
                }
            finally:  # (before the database server stops)
                for svc in services:
                    await svc.stop()
                    await svc.db.close()
    finally:
        await connector.stop()


def run(*, quick: bool = False, backend: str | None = None) -> dict[str, Any]:
    backend = backend or default_backend()
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        m = asyncio.run(measure(Path(tmp), backend=backend))
    everything = ideal_last_post(CHANNELS, PER_CHANNEL, TEAMS_LIMITS_PER_THREAD, ((TEAMS_APP_PER_SECOND, 1.0),))
    share = everything / m["last_post_at"] if m["last_post_at"] > 0 else float("nan")
    return {
        "replicas": len(REPLICAS), "backend": m["backend"],
        "backend_note": ("PostgreSQL (simulator.postgres) when its binaries and back end are installed, each"
                         " replica with its own connections; else one SQLite file, the two workers sharing one"
                         " connection"),
        "channels": CHANNELS, "cards_per_channel": PER_CHANNEL, "posts": m["posts"],
        "last_post_at_seconds": rnd(m["last_post_at"]),
        "ideal_last_post_all_channels_seconds": rnd(everything),
        "share_of_ceiling": goal(rnd(share, 3), 0.9, ">="),
        "throughput_posts_per_second": rnd(m["posts"] / m["last_post_at"], 2) if m["last_post_at"] > 0 else None,
        "throttled_429": goal(m["throttled_429"], 0, "=="),
        "rejected_by_status": m["rejected"],
        "lost": goal(m["lost"], 0, "=="),
        "duplicated": goal(m["duplicated"], 0, "=="),
        "settled_by_replica": m["settled_by_replica"],
        "outbox_after": m["outbox"],
        "wall_seconds": rnd(m["wall_seconds"]),
        "drain_rounds": m["rounds"],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
