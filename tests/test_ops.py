"""Operations: key rotation, backup and restore, health and readiness endpoints, CLI basics (metrics: test_metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken

from core.domain import RecordKind
from core.errors import ConfigError
from store.db import open_database
from store.vault import KeyRing, Vault
from tests.conftest import sqlite_only
from tests.serving import wait_until

ROOT = Path(__file__).resolve().parent.parent


async def test_rotation_keeps_secrets_readable_and_retires_the_old_key(tmp_path):
    db = await open_database(str(tmp_path / "v.sqlite3"))
    ring = KeyRing(str(tmp_path / "k.key"), env={})
    vault = Vault(db, ring)
    await vault.set("ifs.client_secret", "s3cret")
    await vault.set("bot.app_password", "pw")
    old_keys = ring.keys()
    assert await vault.rotate_key() == 2
    new_keys = ring.keys()
    assert len(new_keys) == 1 and new_keys != old_keys
    assert await vault.get("ifs.client_secret") == "s3cret" and await vault.get("bot.app_password") == "pw"
    token = bytes(await db.scalar("SELECT token FROM secrets WHERE name = 'ifs.client_secret'"))
    with pytest.raises(InvalidToken):
        Fernet(old_keys[0]).decrypt(token)
    stale = Vault(db, KeyRing(str(tmp_path / "old.key"), env={"NOTIFIER_MASTER_KEY": old_keys[0].decode()}))
    with pytest.raises(ConfigError):
        await stale.get("ifs.client_secret")
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    await db.close()


async def test_key_from_environment_and_world_readable_key_file_made_private(tmp_path, caplog):
    key = Fernet.generate_key().decode()
    db = await open_database(str(tmp_path / "v.sqlite3"))
    vault = Vault(db, KeyRing(str(tmp_path / "unused.key"), env={"NOTIFIER_MASTER_KEY": key}))
    await vault.set("ifs.client_id", "client")
    assert await vault.get("ifs.client_id") == "client"
    assert not (tmp_path / "unused.key").exists()
    loose = tmp_path / "loose.key"
    loose.write_text(Fernet.generate_key().decode())
    loose.chmod(0o644)
    assert len(KeyRing(str(loose), env={}).keys()) == 1  # warned about and fixed, not refused
    assert loose.stat().st_mode & 0o777 == 0o600
    assert any("had mode 644" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    await db.close()


async def test_queued_transactions_never_run_inside_another_writer(tmp_path):
    """run_transaction queues its job under the write lock and awaits it outside: a transaction() that
    takes the lock later begins after the queued job committed, and jobs run in the order queued."""
    import threading

    db = await open_database(str(tmp_path / "q.sqlite3"))
    try:
        gate = threading.Event()
        order: list[str] = []

        def slow(conn):
            gate.wait(10)
            conn.execute("INSERT INTO meta (name, value) VALUES ('first', '1')")
            order.append("first")

        def quick(conn):
            conn.execute("INSERT INTO meta (name, value) VALUES ('second', '1')")
            order.append("second")

        async def other_writer():
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO meta (name, value) VALUES ('third', '1')")
                order.append("third")

        jobs = [asyncio.ensure_future(db.run_transaction(slow)), asyncio.ensure_future(db.run_transaction(quick)),
                asyncio.ensure_future(other_writer())]
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == []  # all three wait behind the first job, which the thread is running
        gate.set()
        await asyncio.gather(*jobs)
        assert order == ["first", "second", "third"]
        assert await db.scalar("SELECT count(*) FROM meta WHERE name IN ('first', 'second', 'third')") == 3
    finally:
        await db.close()


async def test_transaction_on_the_database_thread_commits_whole_or_not_at_all(tmp_path):
    db = await open_database(str(tmp_path / "t.sqlite3"))
    try:
        def good(conn):
            conn.execute("INSERT INTO meta (name, value) VALUES ('a', '1')")
            return conn.execute("SELECT count(*) FROM meta WHERE name = 'a'").fetchone()[0]

        def bad(conn):
            conn.execute("INSERT INTO meta (name, value) VALUES ('b', '1')")
            conn.execute("INSERT INTO meta (name, value) VALUES ('a', '2')")  # primary key clash

        assert await db.run_transaction(good) == 1
        with pytest.raises(sqlite3.IntegrityError):
            await db.run_transaction(bad)
        assert await db.scalar("SELECT group_concat(name) FROM meta WHERE name IN ('a', 'b')") == "a"
        # the connection is usable (not left inside a transaction) for the next writer
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO meta (name, value) VALUES ('c', '1')")
        assert await db.scalar("SELECT count(*) FROM meta WHERE name = 'c'") == 1

        # COMMIT itself failing (a deferred foreign key stands in for a full disk) leaves no
        # transaction open behind it, on either path
        orphan = ("INSERT INTO seen (kind, company, key, etag, state, step, event_id, first_seen)"
                  " VALUES ('order', '10', 'K', 'e', 's', '', 999999, 0)")

        def fails_at_commit(conn):
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.execute(orphan)

        with pytest.raises(sqlite3.IntegrityError):
            await db.run_transaction(fails_at_commit)
        with pytest.raises(sqlite3.IntegrityError):
            async with db.transaction() as conn:
                await conn.execute("PRAGMA defer_foreign_keys = ON")
                await conn.execute(orphan)
        await db.run_transaction(lambda conn: conn.execute("INSERT INTO meta (name, value) VALUES ('z', '1')"))
        assert await db.scalar("SELECT count(*) FROM meta WHERE name = 'z'") == 1
        assert await db.scalar("SELECT count(*) FROM seen") == 0

        # an unsynced commit (a poll's page) runs at synchronous=NORMAL and puts FULL back, also on failure
        def level(conn):
            return conn.execute("PRAGMA synchronous").fetchone()[0]

        assert await db.run_transaction(level, synced=False) == 1  # NORMAL
        with pytest.raises(sqlite3.IntegrityError):
            await db.run_transaction(bad, synced=False)
        assert await db.run_transaction(level) == 2  # FULL
        assert await db.scalar("PRAGMA synchronous") == 2
    finally:
        await db.close()


@sqlite_only
async def test_backup_and_restore_round_trip(tmp_path, service_factory, ifs, connector):
    from tests.conftest import channel_message, post_activity

    svc = await service_factory()
    ifs.add_order(company="10")
    await post_activity(svc.base_url, channel_message("link company 10", connector.service_url))
    await svc.db.backup_to(str(tmp_path / "backup.sqlite3"))
    restored = await open_database(str(tmp_path / "backup.sqlite3"))
    try:
        assert await restored.scalar("SELECT count(*) FROM bindings") == 1
        vault = Vault(restored, KeyRing(str(tmp_path / "master.key"), env={}))
        assert await vault.get("ifs.client_secret") == "notifier-secret"
    finally:
        await restored.close()


async def test_a_backup_asked_for_during_a_transaction_waits_for_it_and_holds_what_it_committed(tmp_path):
    """The backup runs on the connection's own thread: started inside an open transaction it would retry
    SQLITE_BUSY forever in front of the transaction's own COMMIT (the service hung so when a poll or a
    delivery was writing at the moment of a backup)."""
    db = await open_database(str(tmp_path / "live.sqlite3"))
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO meta (name, value) VALUES ('during', 'the backup')")
            backup = asyncio.create_task(db.backup_to(str(tmp_path / "copy.sqlite3")))
            assert await wait_until(lambda: any(tmp_path.glob(".copy.sqlite3.*.partial")))  # its file is open
            for _ in range(50):
                await asyncio.sleep(0)  # and it has gone as far as it can
            assert not backup.done()  # waiting for the transaction
        await asyncio.wait_for(backup, 60)
    finally:
        await db.close()
    copy = await open_database(str(tmp_path / "copy.sqlite3"))
    try:
        assert await copy.scalar("SELECT value FROM meta WHERE name = 'during'") == "the backup"
    finally:
        await copy.close()


async def test_a_backup_over_a_file_someone_holds_open_replaces_it_without_waiting_for_them(tmp_path):
    """The last backup is being inspected (a write lock held on it): the new backup is written beside it and
    renamed over it, instead of retrying the locked file forever on the store's thread."""
    db = await open_database(str(tmp_path / "live.sqlite3"))
    copy = tmp_path / "copy.sqlite3"
    holder = sqlite3.connect(copy, isolation_level=None)
    try:
        holder.execute("CREATE TABLE inspected (x)")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO inspected VALUES (1)")
        await asyncio.wait_for(db.backup_to(str(copy)), 60)
        assert await db.writable()
    finally:
        holder.close()
        await db.close()
    restored = await open_database(str(copy))
    try:
        assert await restored.scalar("SELECT count(*) FROM meta") >= 1
    finally:
        await restored.close()
    assert oct(copy.stat().st_mode & 0o777) == oct(0o600) and [p.name for p in tmp_path.glob(".*partial")] == []


async def test_a_backup_removes_what_a_killed_backup_left_and_keeps_what_a_running_one_writes(tmp_path):
    db = await open_database(str(tmp_path / "live.sqlite3"))
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()  # a process that has ended: its pid names no process now
    abandoned = tmp_path / f".copy.sqlite3.{gone.pid}.1.partial"
    running = tmp_path / f".copy.sqlite3.{os.getpid()}.2.partial"
    for f in (abandoned, running):
        f.write_bytes(b"half a backup")
    try:
        await db.backup_to(str(tmp_path / "copy.sqlite3"))
    finally:
        await db.close()
    assert not abandoned.exists() and running.exists() and (tmp_path / "copy.sqlite3").exists()


async def test_health_and_readiness(service_factory, ifs, connector):
    from tests.conftest import channel_message, post_activity

    svc = await service_factory()
    ifs.add_order(company="10")
    await post_activity(svc.base_url, channel_message("link company 10", connector.service_url))
    await svc.poll_source(RecordKind.ORDER)
    async with httpx.AsyncClient(base_url=svc.base_url) as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ifs"] is True and ready.json()["database"] is True
    await ifs.stop()  # readiness reads what the last poll found: a poll has to notice first
    await svc.poll_source(RecordKind.ORDER)
    async with httpx.AsyncClient(base_url=svc.base_url) as client:
        not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["ifs"] is False


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True,
                          input=stdin, timeout=120, env=full_env)


async def test_cli_secrets_never_echo_values_and_bad_config_names_the_key(tmp_path):
    from tests.conftest import write_config

    cfg = str(write_config(tmp_path))
    out = await asyncio.to_thread(run_cli, "--config", cfg, "secrets", "set", "ifs.client_secret",
                                  stdin="top-secret-value\n")
    assert out.returncode == 0 and "top-secret-value" not in out.stdout + out.stderr
    listed = await asyncio.to_thread(run_cli, "--config", cfg, "secrets", "list")
    assert "ifs.client_secret" in listed.stdout and "top-secret-value" not in listed.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[ifs]\npage_size = -1\n")
    broken = await asyncio.to_thread(run_cli, "--config", str(bad), "check")
    assert broken.returncode == 2 and "ifs.page_size" in broken.stderr
    helped = await asyncio.to_thread(run_cli, "--help")
    for command in ("serve", "demo", "secrets", "poll", "check", "audit"):
        assert command in helped.stdout


async def test_cli_check_reports_precisely(tmp_path, ifs):
    from tests.conftest import make_service

    svc = await make_service(tmp_path, ifs.base_url)
    await svc.ifs.aclose()
    await svc.db.close()
    cfg = str(tmp_path / "notifier.toml")
    ok = await asyncio.to_thread(run_cli, "--config", cfg, "check")
    assert ok.returncode == 0 and "ok   token" in ok.stdout and "orders" in ok.stdout
    fed = await asyncio.to_thread(run_cli, "--config", cfg, "secrets", "set", "ifs.client_secret", stdin="wrong\n")
    assert fed.returncode == 0
    refused = await asyncio.to_thread(run_cli, "--config", cfg, "check")
    assert refused.returncode == 1 and "refused the credentials" in refused.stdout


async def test_json_logs_carry_no_secrets(tmp_path, ifs):
    from tests.conftest import make_service

    svc = await make_service(tmp_path, ifs.base_url)
    await svc.ifs.aclose()
    await svc.db.close()
    cfg = str(tmp_path / "notifier.toml")
    out = await asyncio.to_thread(run_cli, "--config", cfg, "poll", "--once",
                                  env={"NOTIFIER__SERVICE__LOG_FORMAT": "json", "NOTIFIER__SERVICE__LOG_LEVEL": "DEBUG"})
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert lines and all("level" in entry for entry in lines)
    assert "notifier-secret" not in out.stderr and "access_token" not in out.stderr


async def test_stopping_during_a_poll_cancels_it_quietly(service_factory, ifs, connector, caplog):
    """SIGTERM while a poll waits for IFS: the poll is cancelled and said so once, and the scheduler does not
    report it as a job that raised an exception (with a traceback in the log of a clean stop)."""
    from bench.common import bind

    svc = await service_factory(start=False)
    await bind(svc.db, "19:stop@thread.tacv2", connector.service_url)
    ifs.add_order(company="10")
    ifs.faults.slow_next(5, 30.0)
    await svc.start()

    async def polling() -> bool:
        return any(e.action == "poll started" for e in await svc.audit.recent(category="poll"))

    assert await wait_until(polling, 20)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(svc.stop(), 30)
    assert "poll(s) cancelled" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("apscheduler") and r.levelno >= logging.ERROR]
