"""Benchmarks: `python -m bench [--only NAME] [--quick]` prints one JSON summary (progress goes to stderr).

Not part of the test run. Every benchmark drives the real code (poller, IFS client, SQLite store,
delivery worker, botbuilder adapter) against the local simulators over 127.0.0.1.
"""
