"""End-to-end latency on the real clock: a record appears in IFS -> its card reaches the channel.

A Service as `serve` runs it (`start(background=True)`: APScheduler with one job per source, and the
delivery worker), `[schedule] every_minutes = 5/60` (a 5 s poll interval), the IFS simulator and the
connector stand-in in this process. Records of all three kinds are created at random moments; the
latency of each is the stand-in's arrival time of its card minus the creation time, both from
time.monotonic(). With polls every 5 s the expected latency is uniform over the interval plus the
poll and delivery work, so the goal for p95 is the interval + 2 s.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import bind, goal, log, make_service, percentile, rnd
from bench.page_cache import EncodedPageCache
from core.domain import RecordKind
from pollers.sources import DEFAULT_SOURCES
from simulator.connector import ConnectorStandIn
from simulator.ifs import IfsSimulator
from store.audit import AuditLog
from store.outbox import Outbox

CHANNEL = "19:bench-latency@thread.tacv2"
INTERVAL = 5.0


async def measure(workdir: Path, records: int, span: float, seed: int = 11, interval: float = INTERVAL
                  ) -> dict[str, Any]:
    sim = IfsSimulator(page_cache=EncodedPageCache())
    await sim.start()
    connector = ConnectorStandIn()
    await connector.start()
    svc = await make_service(workdir, sim.base_url, extra=f"\n[schedule]\nevery_minutes = {interval / 60!r}\n"
                             # each record's own card is what is timed: a poll finding more than
                             # digest_threshold new ones would send one digest instead
                             "[delivery]\ndigest_threshold = 1000\n")
    try:
        await bind(svc.db, CHANNEL, connector.service_url, "10")
        await svc.start(web_runner=False, background=True)
        rng = random.Random(seed)
        offsets = sorted(rng.uniform(0, span) for _ in range(records))
        kinds = [rng.choice(list(RecordKind)) for _ in range(records)]
        created: dict[str, float] = {}
        t0 = time.monotonic()
        log(f"latency: {records} records over {span:.0f} s, polling every {interval:.0f} s")
        for offset, kind in zip(offsets, kinds, strict=True):
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            row = sim.add(kind, "10")
            key = DEFAULT_SOURCES[kind].key_of(row)
            created[f"{kind.value}:10:{key}"] = time.monotonic()
        await connector.wait_for(lambda: len(connector.posts(CHANNEL)) >= records, timeout=interval * 4 + 10)
        # the worker records the card (record -> activity id) just after the stand-in accepted it
        deadline = time.monotonic() + 10
        while True:
            rows = await Outbox(svc.db).cards_in(CHANNEL)
            if len(rows) >= records or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        arrived = {a.activity_id: a.at for a in connector.posts(CHANNEL)}
        latencies = {rid: arrived[aid] - created[rid] for rid, aid in rows if rid in created and aid in arrived}
        polls = await AuditLog(svc.db).count("poll")
        return {"latencies": sorted(latencies.values()), "missing": len(created) - len(latencies),
                "posts": len(connector.posts(CHANNEL)), "throttled": connector.throttled, "polls": polls}
    finally:
        await svc.stop()
        await svc.db.close()
        await connector.stop()
        await sim.stop()


def run(*, quick: bool = False, interval: float = INTERVAL, records: int | None = None,
        span: float | None = None) -> dict[str, Any]:
    records, span = records or (10 if quick else 30), span or (20.0 if quick else 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        m = asyncio.run(measure(Path(tmp), records, span, interval=interval))
    lat = m["latencies"]
    return {
        "records": records,
        "span_seconds": span,
        "poll_interval_seconds": interval,
        "cards_received": m["posts"],
        "missing": goal(m["missing"], 0, "=="),
        "p50_seconds": rnd(percentile(lat, 50)),
        "p95_seconds": goal(rnd(percentile(lat, 95)), interval + 2 if interval == INTERVAL else interval + 10, "<=", "s"),
        "min_seconds": rnd(lat[0]) if lat else None,
        "max_seconds": rnd(lat[-1]) if lat else None,
        "mean_seconds": rnd(sum(lat) / len(lat)) if lat else None,
        "expected_note": f"uniform arrival within a {interval:g} s interval alone gives p50 ~{interval / 2:g} s and p95"
                         f" ~{interval * 0.95:g} s",
        "poll_cycles_audited": m["polls"],
        "throttled_429": m["throttled"],
    }


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.latency", description="record created -> card at the connector")
    p.add_argument("--interval", type=float, default=INTERVAL, help="poll interval in seconds (the default config: 120)")
    p.add_argument("--records", type=int, default=30)
    p.add_argument("--span", type=float, default=60.0, help="seconds over which the records are created")
    a = p.parse_args()
    print(json.dumps(run(interval=a.interval, records=a.records, span=a.span), indent=1))
