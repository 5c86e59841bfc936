"""`python -m bench [--only NAME ...] [--quick]`: run the benchmarks, print one JSON summary on stdout.

NAME is one of ingest, repoll, delivery, replicas, surge, latency, abuse, metadata, steady (repeatable or comma-separated). ingest and
repoll come from the same runs (10,000 and 100,000 records, each in its own process; repoll alone runs
only the 100,000). --quick shortens the latency run from 30 records over 60 s to 10 over 20 s, and
the abuse run from 10,000 junk requests to 2,000.
Progress goes to stderr. Exit status 0 when every goal passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from bench.common import log, machine

NAMES = ("ingest", "repoll", "delivery", "replicas", "surge", "latency", "abuse", "metadata", "steady")


def _passes(node: Any) -> list[bool]:
    """Every pass/fail flag in a section, however deep."""
    if isinstance(node, dict):
        found = [bool(node["pass"])] if "pass" in node and "goal" in node else []
        for v in node.values():
            found += _passes(v)
        return found
    if isinstance(node, list):
        return [p for v in node for p in _passes(v)]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", metavar="NAME", help=f"one of {', '.join(NAMES)}")
    p.add_argument("--quick", action="store_true", help="shorter latency run (10 records over 20 s)")
    args = p.parse_args(argv)
    selected = list(NAMES)
    if args.only:
        selected = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = [n for n in selected if n not in NAMES]
        if unknown:
            p.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(NAMES)})")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def attempt(names: Sequence[str], fn: Any) -> None:
        """Run one benchmark function returning {name: section}; an exception is recorded, not raised."""
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            log(f"{'/'.join(names)} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            for n in names:
                errors[n] = f"{type(exc).__name__}: {exc}"
            return
        for n in names:
            results[n] = out[n]

    if "ingest" in selected or "repoll" in selected:
        from bench import ingest

        wanted = [n for n in ("ingest", "repoll") if n in selected]
        attempt(wanted, lambda: ingest.run(quick=args.quick, need_small="ingest" in selected))
    for name in ("delivery", "replicas", "surge", "latency", "abuse", "metadata", "steady"):
        if name in selected:
            module = __import__(f"bench.{name}", fromlist=["run"])
            log(f"{name}: start")
            attempt([name], lambda m=module, n=name: {n: m.run(quick=args.quick)})

    flags = {n: _passes(results[n]) for n in results}
    summary = {
        "machine": {**machine(), "load_average_1m_at_start": load_before,
                    "note": "peak_rss_mb is this process (delivery, surge, latency run here); ingest sizes report "
                            "their own, each in a fresh process; a load average near or above the core count "
                            "means other work shared the CPUs and wall times are inflated"},
        "quick": args.quick,
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": {n: results[n] for n in selected if n in results},
        "errors": errors,
        "goals": {n: {"passed": sum(f), "failed": len(f) - sum(f)} for n, f in flags.items()},
        "all_passed": not errors and all(all(f) for f in flags.values()),
    }
    print(json.dumps(summary, indent=1, default=str))
    return 0 if summary["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
