"""Interpreter settings for the long-running service: the cyclic garbage collector and thread switching."""

from __future__ import annotations

import gc
import sys

YOUNG_GENERATION_THRESHOLD = 50_000  # CPython's default is 700 allocations
SWITCH_INTERVAL_SECONDS = 0.0005  # CPython's default is 0.005


def settle() -> None:
    """Called once the service is wired, before it starts polling (`app.py serve`; the ingest benchmark
    calls it at the same point). `python -m bench.ingest` reports the time and the peak RSS.

    Garbage collector: what startup built (modules, the adapter, settings) lives as long as the
    process; gc.freeze moves it out of the cyclic collector's sight, so the collections that do run
    never walk it again. A poll allocates a few container objects per IFS row (the parsed row, its
    stored form), next to none of them in reference cycles (reference counting frees them): at the
    default threshold a first poll of 100,000 rows ran some 1,500 young-generation collections, a fifth
    of its main-thread CPU. Every 50,000 allocations instead costs a few MB of cyclic garbage waiting
    a little longer.

    Thread switching: SQLite runs on the database thread without the GIL, but that thread needs the
    GIL back between statements, and while the event loop is busy mapping a page it waits up to the
    switch interval for it each time. At 0.5 ms instead of 5 ms a page's write (while the next page is
    mapped) no longer queues behind the loop: a first poll of 100,000 records took about 15 % less.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
