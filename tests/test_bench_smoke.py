"""The benchmarks still run against today's code (tiny sizes; their numbers are not checked here)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.postgres import NOT_INSTALLED, find_binaries

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_ingest_benchmark_runs_and_counts_right(store):
    if store == "postgresql" and find_binaries() is None:
        pytest.skip(NOT_INSTALLED)
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bench.ingest", "--records", "300",
                                                   "--rounds", "2", "--store", store, "--json"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["store"] == store
    assert result["first_poll"]["new"] == 300 and result["repoll"]["events_created"] == 0
    assert result["db"] == {**result["db"], "events": 300, "deliveries": 300, "seen": 300}


async def test_abuse_benchmark_runs_and_counts_right(tmp_path):
    from bench.abuse import measure

    m = await measure(tmp_path, requests=240, signed=2, concurrency=8)
    assert sum(m["statuses"].values()) == 240 and 500 not in m["statuses"]
    assert m["rejects_counted"] == 240 and m["ifs_tokens"] == 0 and m["commands"] == 2
