"""Fail-over: two `serve` processes on one PostgreSQL, the leader SIGKILLed during a poll and during delivery.

Seeded trials; in each, two replicas run (the one killed in the trial before is replaced by a new process
with a new name), orders are added to the IFS simulator, and the leader, the replica whose "leadership
acquired" is the latest in the audit trail, is killed with SIGKILL after the k-th request to IFS (during a
poll) or the k-th card at the connector stand-in (during delivery). Checked: the other replica audits
"leadership acquired" within service.leader_takeover_seconds of the kill; every order reaches every
channel; at most one duplicate card per kill; the poll start and end rows of different replicas never
overlap (a killed replica's poll ends when it is killed); the stand-in, which enforces Teams' limits,
never answered 429.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from core.settings import load_settings
from simulator.connector import ConnectorStandIn
from simulator.postgres import NOT_INSTALLED, find_binaries
from store.audit import AuditEntry, AuditLog
from tests.serving import prepare_serve, start_serve, wait_until

pytestmark = pytest.mark.skipif(find_binaries() is None, reason=NOT_INSTALLED)

TAKEOVER = 5.0  # service.leader_takeover_seconds of the replicas
TRIALS = 10
CHANNELS = ("19:failover-1@thread.tacv2", "19:failover-2@thread.tacv2", "19:failover-3@thread.tacv2")


async def prepare(tmp_path: Path, url: str, ifs, connector: ConnectorStandIn) -> Path:
    return await prepare_serve(tmp_path, "failover", url, ifs, connector, CHANNELS,
                               service=f"leader_takeover_seconds = {TAKEOVER}",
                               delivery="lease_seconds = 5")


class Replicas:
    """The serve processes, by replica name."""

    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.killed: dict[str, float] = {}  # name -> time of the SIGKILL
        self.serial = 0

    async def start(self) -> str:
        self.serial += 1
        name = f"replica-{self.serial}"
        self.procs[name] = await start_serve(self.cfg, {"NOTIFIER__SERVICE__REPLICA_NAME": name})
        return name

    async def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        self.killed[name] = time.time()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                codes[name] = await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                codes[name] = await proc.wait()
        return codes


def poll_intervals(rows: list[AuditEntry], killed: dict[str, float], end: float) -> dict[str, list[tuple[float, float]]]:
    """Per replica, the spans in which it was polling (a source's start row to its end row)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    open_: dict[tuple[str, str], float] = {}
    for r in sorted(rows, key=lambda e: e.id):
        key = (r.actor or "?", str(r.detail.get("source")))
        if r.action == "poll started":
            open_[key] = r.at
        elif r.action == "poll ended" and key in open_:
            spans.setdefault(key[0], []).append((open_.pop(key), r.at))
    for (actor, _source), started in open_.items():  # killed mid-poll: it polled until the kill
        spans.setdefault(actor, []).append((started, killed.get(actor, end)))
    return spans


def overlaps(spans: dict[str, list[tuple[float, float]]]) -> list[tuple[str, str, tuple[float, float], tuple[float, float]]]:
    found = []
    actors = sorted(spans)
    for i, a in enumerate(actors):
        for b in actors[i + 1:]:
            for sa in spans[a]:
                for sb in spans[b]:
                    if sa[0] < sb[1] and sb[0] < sa[1]:
                        found.append((a, b, sa, sb))
    return found


async def test_the_other_replica_takes_over_within_the_bound_and_nothing_is_lost_doubled_or_throttled(
        tmp_path, ifs, database_url):
    import app

    rng = random.Random(20261205)
    connector = ConnectorStandIn()
    await connector.start()
    replicas: Replicas | None = None
    db = None
    url = database_url
    try:
        cfg = await prepare(tmp_path, url, ifs, connector)
        db, _vault = await app.open_store(load_settings(cfg, env={}), keys=False)
        audit = AuditLog(db)
        expected: set[str] = {ifs.add_order(company="10")["OrderNo"] for _ in range(3)}

        async def lifecycle() -> list[AuditEntry]:
            return await audit.recent(limit=100_000, category="lifecycle")

        async def leader() -> str | None:
            for e in await lifecycle():  # newest first
                if e.action == "leadership acquired":
                    return e.actor if e.actor in replicas.procs else None
            return None

        async def started(name: str) -> bool:
            rows = await audit.recent(limit=100_000, category="system")
            return any(e.action == "service started" and e.detail.get("replica") == name for e in rows)

        async def leader_known() -> bool:
            return await leader() is not None

        def cards() -> Counter[tuple[str, str]]:
            got: Counter[tuple[str, str]] = Counter()
            for p in connector.posts():
                text = p.activity["attachments"][0]["content"].get("fallbackText", "")
                for no in expected:
                    if no in text.split():
                        got[(p.channel_id, no)] += 1
            return got

        replicas = Replicas(cfg)
        for _ in range(2):
            await replicas.start()
        takeovers: list[float] = []
        for trial in range(TRIALS):
            assert await wait_until(leader_known, 30), f"trial {trial}: no leader"
            for name in list(replicas.procs):
                assert await wait_until(lambda n=name: started(n), 30), f"{name} did not start"
            victim = await leader()
            assert victim is not None
            for _ in range(rng.randint(1, 3)):
                expected.add(ifs.add_order(company="10")["OrderNo"])
            # every trial's leader polls before it is killed (the check for overlapping polls needs each of
            # them): a new leader reads $metadata first, and any replica may post the backlog's cards
            async def polled(v: str = victim) -> bool:
                rows = await audit.recent(limit=100_000, category="poll")
                return any(e.action == "poll started" and e.actor == v for e in rows)

            assert await wait_until(polled, 30), f"trial {trial}: {victim} never polled"
            if trial % 2 == 0:  # during a poll: after the k-th request to IFS from now (only the leader asks)
                base, k = len(ifs.requests), rng.randint(1, 3)
                assert await wait_until(lambda b=base, k=k: len(ifs.requests) >= b + k, 20)
            else:  # during delivery: after the k-th card from now
                base, k = len(connector.posts()), rng.randint(1, 3)
                assert await wait_until(lambda b=base, k=k: len(connector.posts()) >= b + k, 20)
            await replicas.kill(victim)
            killed_at = replicas.killed[victim]
            await replicas.start()  # the replacement starts while the survivor takes over

            async def taken_over(v: str = victim, at: float = killed_at) -> bool:
                return any(e.action == "leadership acquired" and e.at > at and e.actor != v for e in await lifecycle())

            assert await wait_until(taken_over, 3 * TAKEOVER), f"trial {trial}: nobody took over from {victim}"
            first = min(e.at for e in await lifecycle() if e.action == "leadership acquired" and e.at > killed_at)
            takeovers.append(first - killed_at)

        async def all_delivered() -> bool:
            got = cards()
            return all(got[(ch, no)] >= 1 for ch in CHANNELS for no in expected)

        assert await wait_until(all_delivered, 60), "not every order reached every channel"
        end = time.time()
        codes = await replicas.stop_all()
        assert set(codes.values()) == {0}, codes

        kills = len(replicas.killed)
        got = cards()
        duplicates = sum(n - 1 for n in got.values())
        assert duplicates <= kills, (duplicates, kills)
        assert max(takeovers) <= TAKEOVER, takeovers
        assert connector.throttled == 0, [
            (r.conversation_id, r.at, [(round(a.at - r.at, 3), a.op) for a in connector.accepted
                                       if a.channel_id == r.conversation_id and abs(a.at - r.at) < 2.5],
             replicas.killed) for r in connector.rejected if r.status == 429][:3]
        rows = [e for e in await audit.recent(limit=100_000, category="poll")
                if e.action in ("poll started", "poll ended")]
        spans = poll_intervals(rows, replicas.killed, end)
        assert len(spans) >= TRIALS  # every trial's leader polled (the audit trail names it)
        assert overlaps(spans) == []
    finally:
        if replicas is not None:
            for proc in replicas.procs.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        if db is not None:
            await db.close()
        await connector.stop()
