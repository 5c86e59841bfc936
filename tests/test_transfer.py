"""Tests for migrate-store: a store filled by the service itself is copied to another back end and back,
and everything the service shows of it (links, audit trail, secrets, outbox, people) reads the same."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import bench.common
from bench.common import bind, service_from
from bot.bindings_io import export_bindings
from core.clock import FakeClock
from core.domain import RecordKind
from core.people import Person
from store.audit import AuditLog
from store.channels import Channels
from store.db import open_database
from store.leader import LEADER_KEY, FileLeadership, Timing
from store.leases import Replicas
from store.outbox import Outbox
from store.people import Claims, People, ReminderStore
from store.transfer import TABLES, TransferRefused, describe, transfer
from store.unit import Store
from store.vault import KeyRing, Vault
from tests.conftest import CHANNEL, TEST_IFS, TEST_SERVICE

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"bot.app_password": "p@ss-word-1", "bot.tenant_id": "tenant-guid"}


async def filled_store(tmp_path: Path, ifs, connector) -> str:
    """A SQLite store written by the service: a linked channel, a poll (events, seen rows, deliveries, source
    state, audit), deliveries sent (cards), secrets, people, a claim, a snooze, a reminder slot and the
    scheduler's epoch. Always SQLite (whatever NOTIFIER_TEST_STORE says): the store being moved."""
    for n in range(3):
        ifs.add_order(company="10", VendorName=f"Vendor {n}", GrossAmtCurr=1000 + n, CurrencyCode="EUR")
    ifs.add_invoice(company="10")
    svc = await service_from(bench.common.write_config(tmp_path, service=TEST_SERVICE, ifs=TEST_IFS), ifs.base_url)
    try:
        await svc.start(background=False)
        await bind(svc.db, CHANNEL, connector.service_url)
        await svc.poll_once()
        await svc.worker.run_once()
        for name, value in SECRETS.items():
            await svc.vault.set(name, value)
        store = Store(svc.db)
        async with store.unit() as u:
            await u.people.put(Person("ALAIN", "Alain Approver", aad_object_id="0f0e0d0c-aaaa-bbbb-cccc-000000000001"))
            await u.people.put(Person("BEA", "Bea Buyer", upn="bea@example.com", personal=False))
            await u.claims.claim(f"{RecordKind.ORDER.value}:10:1", "0f0e0d0c-aaaa-bbbb-cccc-000000000001", "Alain")
            await u.reminders.snooze("0f0e0d0c-aaaa-bbbb-cccc-000000000001", "order:10:1", 2e9)
        assert await ReminderStore(svc.db).take_slot("2026-12-05 09:00")
        led = asyncio.Event()

        async def gained(epoch: int) -> None:
            led.set()

        async def lost(reason: str) -> None:
            raise AssertionError(reason)

        leading = asyncio.create_task(FileLeadership(svc.db, svc.settings.service.database, "serve-a",
                                                     Timing(15.0)).run(gained, lost))
        await asyncio.wait_for(led.wait(), 30)  # the scheduler's epoch is recorded, as a leading `serve` does
        leading.cancel()
        await asyncio.gather(leading, return_exceptions=True)
        await Replicas(svc.db, "serve-a", FakeClock(1000.0)).beat(7.5)  # a heartbeat long gone: not copied
    finally:
        await svc.stop()
        await svc.db.close()
    return str(tmp_path / "notifier.sqlite3")


async def views(database: str, key_file: Path) -> dict[str, Any]:
    """What the service reads back: links, audit trail, secrets, outbox, cards, people, claims, row counts."""
    db = await open_database(database)
    try:
        vault = Vault(db, KeyRing(str(key_file), env={}))
        audit = [e.to_dict() for e in await AuditLog(db).recent(limit=10_000)]
        return {
            "bindings": await export_bindings(db),
            "channels": await Channels(db).all(),
            "audit": audit,
            "secrets": {name: await vault.get(name) for name, _ in await vault.names()},
            "secret_times": await vault.names(),
            "outbox": await Outbox(db).counts(),
            "cards": await Outbox(db).cards_in(CHANNEL),
            "people": await People(db).all(),
            "claim": await Claims(db).get(f"{RecordKind.ORDER.value}:10:1"),
            "snoozed": await ReminderStore(db).snoozed("0f0e0d0c-aaaa-bbbb-cccc-000000000001", 0),
            "slot_taken_again": await ReminderStore(db).take_slot("2026-12-05 09:00"),
            "rows": await Store(db).row_counts(),
            "leadership": [tuple(r) for r in await db.fetchall("SELECT name, epoch, holder, since FROM leadership")],
        }
    finally:
        await db.close()


def _summary(report) -> dict[str, int]:
    return {c.table: c.rows for c in report.tables}


async def test_sqlite_to_sqlite_keeps_every_view_and_ids_continue(tmp_path, ifs, connector):
    source = await filled_store(tmp_path, ifs, connector)
    target = tmp_path / "copy" / "notifier.sqlite3"
    before = await views(source, tmp_path / "master.key")

    report = await transfer(f"sqlite:{source}", f"sqlite:{target}", batch=2)

    after = await views(str(target), tmp_path / "master.key")
    assert after == before
    assert before["secrets"] == SECRETS | {n: v for n, v in before["secrets"].items() if n.startswith("ifs.")}
    assert before["outbox"].get("sent", 0) >= 4 and len(before["cards"]) >= 4 and len(before["audit"]) > 5
    assert before["slot_taken_again"] is False  # the reminder slot (a meta row) came along
    assert [row[:3] for row in before["leadership"]] == [("scheduler", 1, "serve-a")]
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        assert src.execute("SELECT count(*) FROM replicas").fetchone()[0] == 1
        assert dst.execute("SELECT count(*) FROM replicas").fetchone()[0] == 0  # heartbeats stay behind
    assert [c.table for c in report.tables] == list(TABLES)
    counts = _summary(report)
    assert counts["events"] == before["rows"]["events"] and counts["audit"] == len(before["audit"])
    db = await open_database(str(target))
    try:  # new rows continue after the copied ids
        new_id = await AuditLog(db).record("system", "after the move", "ok")
        assert new_id == max(e["id"] for e in before["audit"]) + 1
    finally:
        await db.close()
    assert target.stat().st_mode & 0o777 == 0o600


async def test_sqlite_to_postgresql_and_back_keeps_every_view(tmp_path, ifs, connector, pg_server):
    source = await filled_store(tmp_path, ifs, connector)
    url = pg_server.new_database()
    back = tmp_path / "back.sqlite3"
    before = await views(source, tmp_path / "master.key")

    there = await transfer(f"sqlite:{source}", url, batch=3)
    on_postgres = await views(url, tmp_path / "master.key")
    again = await transfer(url, f"sqlite:{back}")
    after = await views(str(back), tmp_path / "master.key")

    assert on_postgres == before
    assert after == before
    assert _summary(there) == _summary(again)
    db = await open_database(url)
    try:  # the identity sequences were set past the copied ids
        new_id = await AuditLog(db).record("system", "after the move", "ok")
        assert new_id == max(e["id"] for e in before["audit"]) + 1
    finally:
        await db.close()


async def test_a_target_that_holds_data_is_refused_and_left_as_it_was(tmp_path, ifs, connector):
    source = await filled_store(tmp_path, ifs, connector)
    target = tmp_path / "other.sqlite3"
    db = await open_database(str(target))
    await AuditLog(db).record("system", "service started", "ok")
    await db.close()

    with pytest.raises(TransferRefused, match=r"already holds data \(audit: 1 rows\).*empty store only"):
        await transfer(f"sqlite:{source}", f"sqlite:{target}")

    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


async def test_a_copy_that_fails_half_way_commits_nothing(tmp_path, ifs, connector):
    source = await filled_store(tmp_path, ifs, connector)
    with sqlite3.connect(source) as conn:  # a row SQLite let in that the target's constraints refuse
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("INSERT INTO bindings (channel_id, company, kinds, created_at) VALUES ('19:gone', '20', 'order', 0)")
    target = tmp_path / "copy.sqlite3"

    with pytest.raises(TransferRefused, match=r"table bindings: .*FOREIGN KEY constraint failed.*nothing was committed"):
        await transfer(source, f"sqlite:{target}")

    with sqlite3.connect(target) as conn:
        assert [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("secrets", "channels", "bindings")] \
            == [0, 0, 0]
    with sqlite3.connect(source) as conn:
        conn.execute("DELETE FROM bindings WHERE channel_id = '19:gone'")
    retried = await transfer(source, f"sqlite:{target}")  # the failed copy left the target empty
    assert _summary(retried)["bindings"] == 1 and _summary(retried)["secrets"] >= 3


async def test_a_store_a_running_service_holds_is_refused_before_anything_is_written(tmp_path, ifs, connector):
    source = await filled_store(tmp_path, ifs, connector)
    db = await open_database(source)
    running = FileLeadership(db, source, "serve", Timing(15.0))  # what `serve` holds while it runs
    assert running.try_lock()
    try:
        with pytest.raises(TransferRefused, match=r"--from: a notifier process is running on sqlite:.*stop the"
                                                  r" service first"):
            await transfer(source, f"sqlite:{tmp_path / 'new.sqlite3'}")
    finally:
        running.unlock()
        await db.close()

    assert not (tmp_path / "new.sqlite3").exists()
    assert _summary(await transfer(source, f"sqlite:{tmp_path / 'new.sqlite3'}"))["channels"] == 1


async def test_a_postgresql_store_whose_replicas_run_is_refused(tmp_path, pg_server):
    import asyncpg

    url = pg_server.new_database()
    db = await open_database(url)
    await db.close()
    leader = await asyncpg.connect(url)
    try:
        assert await leader.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_KEY)
        with pytest.raises(TransferRefused, match=r"--from: a replica of the service runs the scheduler on"
                                                  r" postgresql://notifier@127.0.0.1:\d+/\w+: stop every replica"):
            await transfer(url, f"sqlite:{tmp_path / 'out.sqlite3'}")
        await leader.execute("SELECT pg_advisory_unlock($1)", LEADER_KEY)
        await leader.execute("INSERT INTO replicas (replica, started_at, seen_at) VALUES ('b-1', $1, $1)", time.time())
        with pytest.raises(TransferRefused, match=r"replicas of the service were alive .* \(b-1\)"):
            await transfer(url, f"sqlite:{tmp_path / 'out.sqlite3'}")
    finally:
        await leader.close()
    assert not (tmp_path / "out.sqlite3").exists()


@pytest.mark.parametrize(("source", "target", "message"), [
    ("sqlite:{tmp}/missing.sqlite3", "sqlite:{tmp}/b.sqlite3", "--from sqlite:{tmp}/missing.sqlite3: no such file"),
    ("sqlite:{tmp}/a.sqlite3", "postgresql://notifier:hunter2@db.example.com/notifier",
     "--to postgresql://notifier@db.example.com/notifier: a password on the command line"),
    ("sqlite:{tmp}/a.sqlite3", "postgres://notifier@db.example.com/notifier?password=hunter2",
     "--to postgres://notifier@db.example.com/notifier: a password on the command line"),
    ("sqlite:{tmp}/a.sqlite3", "mysql://db/notifier", "--to: mysql:// is not a store"),
    ("sqlite:{tmp}/a.sqlite3", "{tmp}/a.sqlite3", "is the source itself"),
])
async def test_refusals_name_the_option_and_never_the_password(tmp_path, source, target, message):
    sqlite3.connect(tmp_path / "a.sqlite3").close()
    fill = {"tmp": str(tmp_path)}

    with pytest.raises(TransferRefused) as caught:
        await transfer(source.format(**fill), target.format(**fill))

    assert message.format(**fill) in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert not (tmp_path / "b.sqlite3").exists()


def test_describe_drops_the_password_and_keeps_the_rest():
    assert describe("postgresql://u:secret@h:5433/db?sslmode=require") == "postgresql://u@h:5433/db?sslmode=require"
    assert describe("postgresql://u@h/db?password=secret&sslmode=verify-full") == "postgresql://u@h/db?sslmode=verify-full"
    assert describe("sqlite:///data/n.sqlite3") == "sqlite:/data/n.sqlite3"
    assert describe("var/n.sqlite3") == "sqlite:var/n.sqlite3"


async def test_the_command_line_copies_and_prints_a_summary(tmp_path, ifs, connector):
    source = await filled_store(tmp_path, ifs, connector)
    target = tmp_path / "cli.sqlite3"

    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "app.py", "migrate-store", "--from", f"sqlite:{source}", "--to",
                         f"sqlite:{target}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    again = await asyncio.to_thread(
        subprocess.run, [sys.executable, "app.py", "migrate-store", "--from", f"sqlite:{source}", "--to",
                         f"sqlite:{target}"], cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "row counts match table by table" in done.stdout and "same master key" in done.stdout
    assert any(line.split()[:1] == ["deliveries"] for line in done.stdout.splitlines())
    assert again.returncode == 1 and "already holds data" in again.stderr


def test_backup_of_a_postgresql_store_prints_the_pg_dump_command_without_the_password(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NOTIFIER__SERVICE__DATABASE": "postgresql://notifier:hunter2@db.internal:5432/notify"}

    done = subprocess.run([sys.executable, "app.py", "backup", str(tmp_path / "b.dump")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert (f"pg_dump --format=custom --file={tmp_path / 'b.dump'} --dbname=postgresql://notifier@db.internal:5432/notify"
            in done.stderr), done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert not (tmp_path / "b.dump").exists()


async def test_the_command_line_moves_a_store_to_postgresql_and_the_service_reads_it(tmp_path, ifs, connector,
                                                                                     pg_server):
    source = await filled_store(tmp_path, ifs, connector)
    url = pg_server.new_database()
    before = await views(source, tmp_path / "master.key")

    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "app.py", "migrate-store", "--from", f"sqlite:{source}", "--to", url],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    listed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "app.py", "bindings", "list"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin", "NOTIFIER__SERVICE__DATABASE": url,
                         "NOTIFIER__SERVICE__KEY_FILE": str(tmp_path / "master.key")})

    assert done.returncode == 0, done.stderr
    assert f"to {url} (schema version" in done.stdout
    assert listed.returncode == 0, listed.stderr
    assert CHANNEL in listed.stdout and "company 10" in listed.stdout
    assert await views(url, tmp_path / "master.key") == before
