"""The IFS simulator in a process of its own, pre-filled with pending records.

`python -m bench.ifs_server --orders N --invoices N --vouchers N [--company 10]` prints one JSON line
`{"base_url": ...}` on stdout once it listens on 127.0.0.1, and serves until stdin is closed or the
process is terminated. The ingest benchmark runs the simulator here so that its serving work (filter,
sort, JSON encoding) and its 100,000 rows stay out of the measured process: the client side's time and
peak RSS are what is measured, as they would be against a remote IFS tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from bench.page_cache import EncodedPageCache
from simulator.ifs import IfsSimulator


async def serve(args: argparse.Namespace) -> None:
    sim = IfsSimulator(token_ttl=args.token_ttl, page_cache=EncodedPageCache())
    for kind, n in (("order", args.orders), ("invoice", args.invoices), ("voucher", args.vouchers)):
        if n:
            sim.bulk_generate(kind, n, company=args.company)
    await sim.start("127.0.0.1", 0)
    print(json.dumps({"base_url": sim.base_url}), flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    # stdin closing (the parent went away) also ends the server
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not sys.stdin.buffer.read1(1) else None)
    try:
        await done.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ifs_server")
    p.add_argument("--orders", type=int, default=0)
    p.add_argument("--invoices", type=int, default=0)
    p.add_argument("--vouchers", type=int, default=0)
    p.add_argument("--company", default="10")
    p.add_argument("--token-ttl", type=float, default=180.0)
    asyncio.run(serve(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
