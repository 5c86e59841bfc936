"""First poll of a large pending set, its floor, and the unchanged re-poll.

`python -m bench.ingest --records N [--page-size 5000] [--rounds 3] [--json] [--profile FILE]` runs, in this
process:

1. the IFS simulator in a child process (bench.ifs_server) holding N pending records, split over
   orders, invoices and vouchers (about a third each), all for company 10, one channel bound to it;
2. a warm-up download of every page (the simulator caches each filtered and sorted result set, as a
   database would have it in cache; neither side of the comparison pays for the first sort);
3. the first poll: the real Poller + IfsClient + a fresh SQLite file, every record new;
4. the floor: plain httpx GETs of the same pages (same $filter/$select/$orderby/$top/$skip) with one
   bearer token, json.loads of each body, nothing else;
5. the re-poll of the unchanged set (zero events expected), and the floor once more;
steps 3-5 `--rounds` times, each with a fresh SQLite file; the medians are reported (run-to-run noise on a
shared 2-core VM is about +-15 %, for the floor as much as for the poll).

`details_limit=0`: the per-record approval reads (two GETs per new record) exist for small cycles,
where each record becomes its own card; in a first poll of 100,000 records everything ends in digests
and the engine skips those reads after `details_limit` (default 50) anyway. Zero keeps the request
count exactly the paging cost being measured.

Run without --records (as `python -m bench` does), it runs 10,000 and 100,000 records each in a fresh
subprocess so that each peak RSS (ru_maxrss) is that size's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, bind, goal, ifs_server, log, peak_rss_mb, rnd, sim_stats
from core import runtime
from core.domain import RecordKind
from pollers.engine import Poller
from pollers.ifs_client import IfsClient, IfsClientConfig, _query  # the client's own query encoding
from pollers.sources import DEFAULT_SOURCES
from simulator.postgres import NOT_INSTALLED, PostgresServer, find_binaries
from store.audit import AuditLog
from store.bindings import Bindings
from store.db import open_database
from store.poll_writer import PollWriter
from store.seen import Seen
from store.unit import Store

COMPANY = "10"
CHANNEL = "19:bench-ingest@thread.tacv2"
KINDS = (RecordKind.ORDER, RecordKind.INVOICE, RecordKind.VOUCHER)


def split(records: int) -> dict[RecordKind, int]:
    base, extra = divmod(records, 3)
    return {k: base + (1 if i < extra else 0) for i, k in enumerate(KINDS)}


def min_requests(n: int, page_size: int) -> int:
    """The client stops on a short page; a kind of n rows therefore needs floor(n/size)+1 = ceil((n+1)/size)
    GETs: when n is an exact multiple of the page size the last, empty page is what says "done"."""
    return math.ceil((n + 1) / page_size)


async def floor(base_url: str, page_size: int) -> dict[str, Any]:
    """Download + json.loads of exactly the pages the poller reads, one token, nothing else."""
    client_for_urls = IfsClient(IfsClientConfig(base_url=base_url, realm="ifs", client_id="notifier",
                                                client_secret="notifier-secret"))
    await client_for_urls.aclose()  # used for entity_url() only
    started, cpu = time.perf_counter(), time.process_time()
    rows = requests = 0
    async with httpx.AsyncClient(timeout=120) as http:
        resp = await http.post(f"{base_url}/auth/realms/ifs/protocol/openid-connect/token",
                               data={"grant_type": "client_credentials", "client_id": "notifier",
                                     "client_secret": "notifier-secret", "scope": "openid microprofile-jwt"})
        headers = {"Authorization": f"Bearer {resp.json()['access_token']}", "Accept": "application/json"}
        for kind in KINDS:
            spec = DEFAULT_SOURCES[kind]
            params = {"$filter": spec.filter_for(COMPANY), "$select": ",".join(spec.select),
                      "$orderby": ",".join(spec.orderby)}
            base = client_for_urls.entity_url(spec.projection, spec.entity_set)
            skip = 0
            while True:
                url = f"{base}?{_query({**params, '$top': str(page_size), '$skip': str(skip)})}"
                r = await http.get(url, headers=headers)
                r.raise_for_status()
                page = json.loads(r.content)["value"]
                requests += 1
                rows += len(page)
                if len(page) < page_size:
                    break
                skip += page_size
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, "rows": rows,
            "data_requests": requests}


async def one_round(url: str, records: int, page_size: int, target: str,
                    profile: str | None = None) -> dict[str, Any]:
    """A fresh database (a SQLite file path, or a PostgreSQL URL): the first poll, the floor, the unchanged
    re-poll, the floor again."""
    db = await open_database(target)
    client = IfsClient(IfsClientConfig(base_url=url, realm="ifs", client_id="notifier",
                                       client_secret="notifier-secret", timeout=120))
    await bind(db, CHANNEL, "http://127.0.0.1:9/")
    poller = Poller(client=client, sources=DEFAULT_SOURCES, seen=Seen(db), bindings=Bindings(db),
                    writer=PollWriter(db), audit=AuditLog(db), ifs_base_url=url, page_size=page_size,
                    details_limit=0)

    async def timed(what: str) -> tuple[list[Any], dict[str, float]]:
        profiler = None
        if profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        t, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        results = [await poller.poll(kind, COMPANY) for kind in poller.sources]
        took = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                "cpu_main_thread_seconds": time.thread_time() - main_cpu}
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile}.{what}")
        return results, took

    try:
        log(f"ingest {records:,}: first poll")
        s0 = await sim_stats(url)
        first, first_t = await timed("first")
        first_stats = dict(client.stats)
        rss_after_first = peak_rss_mb()
        s1 = await sim_stats(url)
        log(f"ingest {records:,}: floor")
        floor1 = await floor(url, page_size)
        s2 = await sim_stats(url)
        log(f"ingest {records:,}: re-poll")
        again, again_t = await timed("repoll")
        s3 = await sim_stats(url)
        floor2 = await floor(url, page_size)
        counts = await Store(db).row_counts()
        events, deliveries, seen = counts["events"], counts["deliveries"], counts["seen"]
        db_bytes = await db.size_bytes()
    finally:
        await client.aclose()
        await db.close()
    return {
        "first_poll": {
            **first_t,
            "ok": all(r.ok for r in first),
            "errors": [r.error for r in first if r.error],
            "new": sum(r.new for r in first),
            "rows": sum(r.rows for r in first),
            "pages": sum(r.pages for r in first),
            "deliveries": sum(r.deliveries for r in first),
            "data_requests": s1["data_requests"] - s0["data_requests"],
            "token_requests": s1["tokens_issued"] - s0["tokens_issued"],
            "client_stats": first_stats,
        },
        "floors": [floor1, floor2],
        "floor_requests": {"data_requests": s2["data_requests"] - s1["data_requests"],
                           "token_requests": s2["tokens_issued"] - s1["tokens_issued"]},
        "repoll": {
            **again_t,
            "ok": all(r.ok for r in again),
            "new": sum(r.new for r in again),
            "changed": sum(r.changed for r in again),
            "resolved": sum(r.resolved for r in again),
            "events_created": sum(r.new + r.changed + r.resolved for r in again),
            "rows": sum(r.rows for r in again),
            "data_requests": s3["data_requests"] - s2["data_requests"],
            "token_requests": s3["tokens_issued"] - s2["tokens_issued"],
        },
        "db": {"events": events, "deliveries": deliveries, "seen": seen, "bytes": db_bytes},
        "rss_after_first_poll": rss_after_first,
    }


async def measure(records: int, page_size: int, workdir: Path, profile: str | None = None,
                  rounds: int = 3, store: str = "sqlite") -> dict[str, Any]:
    """`rounds` rounds against one server, each with a fresh database; medians are what count (a shared
    2-core VM varies by +-15 % from run to run, the floor as much as the poll). `store`: sqlite (a file in
    `workdir`) or postgresql (a throwaway server on this machine, with its durable defaults)."""
    counts = split(records)
    with contextlib.ExitStack() as stack:
        if store == "postgresql":
            server = stack.enter_context(PostgresServer(durable=True))
            targets = [server.new_database() for _ in range(rounds)]
        else:
            targets = [str(workdir / f"ingest-{i}.sqlite3") for i in range(rounds)]
        url = stack.enter_context(ifs_server(counts[RecordKind.ORDER], counts[RecordKind.INVOICE],
                                             counts[RecordKind.VOUCHER], COMPANY))
        log(f"ingest {records:,}: warm-up download")
        await floor(url, page_size)
        runtime.settle()  # as `app.py serve` does once it is wired
        rss_before = peak_rss_mb()
        done = [await one_round(url, records, page_size, targets[i], profile if i == 0 else None)
                for i in range(rounds)]
    floors = [f for r in done for f in r["floors"]]
    first = [r["first_poll"] for r in done]
    again = [r["repoll"] for r in done]

    def median_of(items: list[dict[str, Any]], key: str) -> float:
        return statistics.median(x[key] for x in items)

    minimum = {k.value: min_requests(n, page_size) for k, n in counts.items()}
    return {
        "records": records,
        "store": store,
        "split": {k.value: n for k, n in counts.items()},
        "page_size": page_size,
        "rounds": rounds,
        "first_poll": {
            **done[0]["first_poll"],  # counts are the same in every round (checked below)
            "seconds": median_of(first, "seconds"),
            "runs": [x["seconds"] for x in first],
            "cpu_seconds": median_of(first, "cpu_seconds"),
            "cpu_main_thread_seconds": median_of(first, "cpu_main_thread_seconds"),
            "ok": all(x["ok"] for x in first) and len({(x["new"], x["deliveries"]) for x in first}) == 1,
            "data_requests_min": sum(minimum.values()),
            "data_requests_min_by_kind": minimum,
        },
        "floor": {
            "seconds": median_of(floors, "seconds"),
            "runs": [f["seconds"] for f in floors],
            "cpu_seconds": median_of(floors, "cpu_seconds"),
            "rows": floors[0]["rows"],
            **done[0]["floor_requests"],
        },
        "repoll": {
            **done[0]["repoll"],
            "seconds": median_of(again, "seconds"),
            "runs": [x["seconds"] for x in again],
            "cpu_seconds": median_of(again, "cpu_seconds"),
            "cpu_main_thread_seconds": median_of(again, "cpu_main_thread_seconds"),
            "ok": all(x["ok"] for x in again),
            "events_created": sum(x["events_created"] for x in again),
        },
        "db": done[0]["db"],
        "rss_mb": {"before_first_poll": rss_before, "peak_after_first_poll": done[0]["rss_after_first_poll"],
                   "peak_end": peak_rss_mb()},
    }


def run_child(records: int, page_size: int = 5000, profile: str | None = None,
              store: str = "sqlite") -> dict[str, Any]:
    """One size in a fresh interpreter, so that its ru_maxrss is its own."""
    cmd = [sys.executable, "-m", "bench.ingest", "--records", str(records), "--page-size", str(page_size),
           "--store", store, "--json"]
    if profile:
        cmd += ["--profile", profile]
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(out.stdout)


def summarize(small: dict[str, Any] | None, big: dict[str, Any],
              on_postgresql: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The `ingest` and `repoll` sections of the summary, goals attached; `on_postgresql`: the same size's
    run with the store in PostgreSQL, compared with the SQLite one."""
    fp, fl, rp = big["first_poll"], big["floor"], big["repoll"]
    ratio = fp["seconds"] / fl["seconds"]
    ingest: dict[str, Any] = {
        "records": big["records"],
        "split": big["split"],
        "page_size": big["page_size"],
        "details_limit": 0,
        "new_events": goal(fp["new"] if fp["ok"] else None, big["records"], "=="),
        "deliveries": goal(fp["deliveries"], big["records"], "=="),
        "seen_rows": goal(big["db"]["seen"], big["records"], "=="),
        "wall_seconds": rnd(fp["seconds"]),
        "records_per_second": round(big["records"] / fp["seconds"]),
        "data_requests": fp["data_requests"],
        "data_requests_min": fp["data_requests_min"],
        "data_requests_min_by_kind": fp["data_requests_min_by_kind"],
        "data_requests_note": ("the client pages with $top/$skip and stops on a short page, so a kind with n rows "
                               "needs ceil((n+1)/page_size) GETs (an exact multiple costs one extra, empty page)"),
        "data_requests_at_min": goal(fp["data_requests"], fp["data_requests_min"], "=="),
        "token_requests": goal(fp["token_requests"], 1, "<="),
        "floor_seconds": rnd(fl["seconds"]),
        "floor_runs_seconds": [rnd(x) for x in fl["runs"]],
        "first_poll_runs_seconds": [rnd(x) for x in fp["runs"]],
        "floor_note": ("plain httpx GET + json.loads of the same pages, one bearer token, same server; "
                       "run after each first poll and each re-poll; wall_seconds, floor_seconds and the ratios "
                       "are medians over the rounds (each round a fresh database)"),
        "ratio_to_floor": goal(rnd(ratio, 2), 3, "<="),
        "cpu_seconds": {
            "main_thread": rnd(fp["cpu_main_thread_seconds"]),
            "other_threads": rnd(fp["cpu_seconds"] - fp["cpu_main_thread_seconds"]),
            "floor": rnd(fl["cpu_seconds"]),
            "note": "this process only (the simulator runs in another); other threads = aiosqlite's SQLite thread",
        },
        "peak_rss_mb": big["rss_mb"]["peak_after_first_poll"],
        "sqlite_bytes": big["db"]["bytes"],
    }
    if small is not None:
        growth = big["rss_mb"]["peak_after_first_poll"] - small["rss_mb"]["peak_after_first_poll"]
        ingest["rss_growth_mb"] = goal(rnd(growth, 1), 100, "<=", "MB")
        ingest["rss_note"] = (f"peak RSS after the first poll, each size in its own process: "
                              f"{small['records']:,} -> {small['rss_mb']['peak_after_first_poll']} MB, "
                              f"{big['records']:,} -> {big['rss_mb']['peak_after_first_poll']} MB")
        ingest["small_run"] = {"records": small["records"], "wall_seconds": rnd(small["first_poll"]["seconds"]),
                               "ratio_to_floor": rnd(small["first_poll"]["seconds"] / small["floor"]["seconds"], 2),
                               "peak_rss_mb": small["rss_mb"]["peak_after_first_poll"]}
    if on_postgresql is not None:
        pg_first = on_postgresql["first_poll"]
        ingest["postgresql"] = {
            "records": on_postgresql["records"],
            "ok": pg_first["ok"] and pg_first["new"] == on_postgresql["records"],
            "wall_seconds": rnd(pg_first["seconds"]),
            "runs_seconds": [rnd(x) for x in pg_first["runs"]],
            "ratio_to_sqlite": rnd(pg_first["seconds"] / fp["seconds"], 2),
            "repoll_wall_seconds": rnd(on_postgresql["repoll"]["seconds"]),
            "database_bytes": on_postgresql["db"]["bytes"],
            "note": ("a throwaway PostgreSQL server on this machine with its durable defaults (fsync on), sharing"
                     " the two cores with the poller and the simulator; medians over the rounds"),
        }
    repoll = {
        "records": big["records"],
        "events_created": goal(rp["events_created"], 0, "=="),
        "ok": rp["ok"],
        "rows_read": rp["rows"],
        "wall_seconds": rnd(rp["seconds"]),
        "runs_seconds": [rnd(x) for x in rp["runs"]],
        "data_requests": rp["data_requests"],
        "token_requests": rp["token_requests"],
        "floor_seconds": rnd(fl["seconds"]),
        "ratio_to_floor": goal(rnd(rp["seconds"] / fl["seconds"], 2), 1.5, "<="),
        "cpu_seconds": {"main_thread": rnd(rp["cpu_main_thread_seconds"]),
                        "other_threads": rnd(rp["cpu_seconds"] - rp["cpu_main_thread_seconds"]),
                        "floor": rnd(fl["cpu_seconds"])},
    }
    return {"ingest": ingest, "repoll": repoll}


def run(*, quick: bool = False, need_small: bool = True) -> dict[str, dict[str, Any]]:
    small = None
    if need_small:
        log("ingest: 10,000 records in a fresh process")
        small = run_child(10_000)
    log("ingest: 100,000 records in a fresh process")
    big = run_child(100_000)
    on_postgresql = None
    if find_binaries() is not None:
        log("ingest: 100,000 records in a fresh process, the store in PostgreSQL")
        on_postgresql = run_child(100_000, store="postgresql")
    else:
        log(f"ingest: no PostgreSQL run: {NOT_INSTALLED}")
    return summarize(small, big, on_postgresql)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest")
    p.add_argument("--records", type=int, default=None, help="one size, in this process (default: 10k and 100k)")
    p.add_argument("--page-size", type=int, default=5000)
    p.add_argument("--json", action="store_true", help="print the raw measurement as JSON")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each with a fresh database (medians count)")
    p.add_argument("--profile", default=None, help="write cProfile stats of round 1's polls to FILE.first/.repoll")
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the database: a SQLite file, or a throwaway PostgreSQL server on this machine")
    args = p.parse_args(argv)
    if args.records is None:
        print(json.dumps(run(), indent=1))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        result = asyncio.run(measure(args.records, args.page_size, Path(tmp), args.profile, args.rounds, args.store))
    print(json.dumps(result, indent=None if args.json else 1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
