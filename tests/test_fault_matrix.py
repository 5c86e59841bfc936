"""Faults from the outside, one test per kind: junk and floods on /api/messages, readiness, a full disk,
a bad database file, lost or replaced keys, admins by UPN, bad settings and oversized input.

Everything runs for real: the service on 127.0.0.1, SQLite files, the botbuilder adapter, a local
Bot Framework token issuer and the Bot Connector stand-in; the CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

import app
from core.clock import FakeClock
from core.domain import RecordKind
from core.settings import load_settings
from simulator.connector import DEFAULT_MEMBERS
from store.audit import AuditLog
from tests import test_bot_auth
from tests.conftest import (
    IFS_SECRETS,
    ON_POSTGRESQL,
    channel_message,
    replies_text,
    sqlite_only,
    write_config,
)
from tests.jwt_issuer import TokenIssuer, new_rsa_key
from tests.test_bot_auth import APP_ID, ROOT, TENANT_ID

issuer = test_bot_auth.issuer  # the local token issuer fixture


async def secured_service(tmp_path: Path, ifs, issuer: TokenIssuer, *, clock=None, extra: str = "") -> app.Service:
    """Bot authentication on (a real app id), signing keys from the local issuer."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp_path, f'\n[bot]\nopenid_metadata_url = "{issuer.metadata_url}"\n{extra}')
    settings = load_settings(cfg, env={}, overrides={"service": {"dev_mode": False}})
    secrets = ifs.vault_secrets() | {"bot.app_id": APP_ID, "bot.app_password": "not-used-here",
                                     "bot.tenant_id": TENANT_ID}
    svc = await app.build_service(settings, secrets, clock=clock)
    await svc.start(background=False)
    return svc


async def close(svc: app.Service) -> None:
    await svc.stop()
    await svc.db.close()


def problems(caplog) -> list[logging.LogRecord]:
    """Log records that are tracebacks or errors."""
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]


async def security_rows(svc: app.Service) -> list:
    return await svc.audit.recent(limit=1000, category="security")


def run_cli(cfg: Path | str, *args: str, stdin: str | None = None, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER")} | (env or {})
    return subprocess.run([sys.executable, "app.py", "--config", str(cfg), *args], cwd=ROOT, capture_output=True,
                          text=True, input=stdin, timeout=timeout, env=full_env)


def one_error_line(done: subprocess.CompletedProcess, code: int, needle: str) -> str:
    """The process failed with `code` and said so in one stderr line holding `needle`, without a traceback."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], done.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def read_only(path: Path):
    """Not writable, also for root (which ignores file modes): the immutable attribute."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a file read-only")
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)


# --------------------------------------------------------------------------- 3: junk on /api/messages

JUNK: dict[str, tuple[bytes, dict[str, str]]] = {
    "empty body": (b"", {"Content-Type": "application/json"}),
    "not JSON": (b"{this is not json", {"Content-Type": "application/json"}),
    "null": (b"null", {"Content-Type": "application/json"}),
    "a list": (b"[]", {"Content-Type": "application/json"}),
    "a number": (b"5", {"Content-Type": "application/json"}),
    "object without type": (b'{"text": "hi"}', {"Content-Type": "application/json"}),
    "type not a string": (b'{"type": ["message"]}', {"Content-Type": "application/json"}),
    "nested garbage": (b'{"a": {"b": [[{"c": null}]]}, "type": {"x": 1}}', {"Content-Type": "application/json"}),
    "nested too deep": (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}),
    "fields of the wrong shape": (b'{"type": "message", "from": 5, "conversation": "x", "entities": 7}',
                                  {"Content-Type": "application/json"}),
    "no content type": (b'{"type": "message"}', {}),
    "wrong content type": (b'{"type": "message"}', {"Content-Type": "text/plain"}),
}


async def test_3_junk_on_api_messages_is_answered_400_or_401_before_botbuilder_without_traceback(
        tmp_path, ifs, connector, issuer, service_factory, caplog):
    caplog.set_level(logging.INFO)
    dev = await service_factory()  # authentication off: only the body can be wrong
    secured = await secured_service(tmp_path / "secured", ifs, issuer)
    forged = issuer.header(audience=APP_ID, service_url=connector.service_url, signing_key=new_rsa_key())
    statuses: dict[str, list[int]] = {}
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for name, (body, headers) in JUNK.items():
                statuses[name] = [
                    (await client.post(f"{dev.base_url}/api/messages", content=body, headers=headers)).status_code,
                    (await client.post(f"{secured.base_url}/api/messages", content=body,
                                       headers=headers)).status_code,
                    (await client.post(f"{secured.base_url}/api/messages", content=body,
                                       headers=headers | {"Authorization": "Bearer x.y.z"})).status_code,
                    (await client.post(f"{secured.base_url}/api/messages", content=body,
                                       headers=headers | forged)).status_code,
                ]
            valid_body_forged = await client.post(f"{secured.base_url}/api/messages", headers=forged,
                                                  json=channel_message("links", connector.service_url))
            too_big = await client.post(f"{dev.base_url}/api/messages", content=b" " * (300 * 1024),
                                        headers={"Content-Type": "application/json"})
    finally:
        await close(secured)

    # development mode: 400; authentication on: 401 without a plausible token (the body is not read),
    # 400 for a plausible token on a body that is no activity
    assert statuses == {name: [400, 401, 401, 400] for name in JUNK}, statuses
    assert valid_body_forged.status_code == 401
    assert too_big.status_code == 413  # the body limit still holds
    assert problems(caplog) == []
    assert not any(r.name.startswith("botbuilder") or r.name.startswith("msrest") for r in caplog.records
                   if r.levelno >= logging.WARNING)
    assert connector.accepted == [] and await dev.audit.recent(limit=5, category="command") == []


# --------------------------------------------------------------------------- 4: floods and audit growth

async def test_4_rejected_requests_make_one_audit_row_per_source_reason_and_minute_and_audit_is_pruned(
        tmp_path, ifs, connector, issuer, caplog):
    clock = FakeClock(start=1_780_000_020.0)  # 20 s into a minute
    svc = await secured_service(tmp_path, ifs, issuer, clock=clock)
    try:
        body = channel_message("link company 10", connector.service_url)
        bad_audience = issuer.header(audience="someone-else", service_url=connector.service_url)
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as client:
            async def flood(n: int, headers: dict[str, str]) -> list[int]:
                return [(await client.post("/api/messages", json=body, headers=headers)).status_code
                        for _ in range(n)]

            minute_one = await flood(300, {}) + await flood(50, bad_audience)
            rows_during = await security_rows(svc)
            warnings_during = [r for r in caplog.records if r.name == "bot.inbound"]
            clock.advance(60)  # the minute rolls over: the next reject writes out the last minute's counts
            minute_two = await flood(1, {})
        after_rollover = await security_rows(svc)
    finally:
        await close(svc)
    assert set(minute_one + minute_two) == {401}
    assert len(rows_during) == 2 and len(warnings_during) == 2  # one per (source, reason) of the minute
    counts = sorted((r.detail["reason"], r.detail["count"], r.detail["minute"]) for r in after_rollover)
    first, second = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")
                     for t in (clock.time() - 60, clock.time()))
    assert counts == [("invalid token", 50, first), ("no token", 1, second), ("no token", 300, first)], counts
    assert all(r.detail["remote"] == "127.0.0.1" for r in after_rollover)
    assert problems(caplog) == []

    # retention: rows older than service.audit_retention_days go at start and then once a day
    db_path = tmp_path / "notifier.sqlite3"
    svc = await app.build_service(load_settings(write_config(tmp_path, "\n[bot]\n"), env={},
                                                overrides={"service": {"audit_retention_days": 30}}),
                                  clock=clock)
    try:
        old = AuditLog(svc.db, FakeClock(clock.time() - 31 * 86400))
        await old.record("system", "ancient", "ok")
        await svc.start(background=False)
        assert [r.action for r in await svc.audit.recent(limit=100) if r.action == "ancient"] == []
        kept = len(await svc.audit.recent(limit=1000))
        await old.record("system", "old by tomorrow", "ok")
        clock.advance(3600)
        await svc.housekeep()  # not a day yet: nothing pruned
        assert len(await svc.audit.recent(limit=1000)) == kept + 1
        clock.advance(86400)
        await svc.housekeep()
        assert [r.action for r in await svc.audit.recent(limit=1000)].count("old by tomorrow") == 0
    finally:
        await close(svc)
    listed = await asyncio.to_thread(run_cli, tmp_path / "notifier.toml", "audit", "--last", "1000", "--json")
    assert listed.returncode == 0, listed.stderr
    actions = [e["action"] for e in json.loads(listed.stdout)]
    assert "inbound rejected" in actions and "ancient" not in actions and "old by tomorrow" not in actions
    assert ON_POSTGRESQL or db_path.exists()


# --------------------------------------------------------------------------- 5: readiness and the ops port

async def test_5_readyz_reads_cached_state_and_moves_to_the_ops_port(tmp_path, ifs, connector):
    ops_port = free_port()
    settings = load_settings(write_config(tmp_path), env={}, overrides={"service": {"ops_port": ops_port}})
    svc = await app.build_service(settings, ifs.vault_secrets())
    await svc.start(background=False)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            public = {p: (await client.get(svc.base_url + p)).status_code for p in ("/healthz", "/readyz", "/metrics")}
            ops = {p: (await client.get(f"http://127.0.0.1:{ops_port}{p}")).status_code
                   for p in ("/healthz", "/readyz", "/metrics")}
            grants = ifs.tokens_issued
            answers = [await client.get(svc.ops_url + "/readyz") for _ in range(200)]
            assert ifs.tokens_issued == grants  # not one token for 200 readiness checks
            await svc.poll_source(RecordKind.ORDER)  # no company linked yet: nothing asked of IFS
            ifs.add_order(company="10")
            await client.post(svc.base_url + "/api/messages", json=channel_message("link company 10",
                                                                                    connector.service_url))
            await svc.poll_source(RecordKind.ORDER)
            after_poll = ifs.tokens_issued
            ready = (await client.get(svc.ops_url + "/readyz")).json()
            await ifs.stop()
            still = (await client.get(svc.ops_url + "/readyz")).json()  # nothing polled since: still ready
            await svc.poll_source(RecordKind.ORDER)
            down = await client.get(svc.ops_url + "/readyz")
    finally:
        await close(svc)
    assert public == {"/healthz": 200, "/readyz": 404, "/metrics": 404}
    assert ops == {"/healthz": 200, "/readyz": 200, "/metrics": 200}
    assert all(a.status_code == 200 and a.json()["ready"] for a in answers)
    assert ready["ready"] and ready["ifs"] and ready["ifs_token_valid"] and ready["database"]
    assert still["ready"] and ifs.tokens_issued == after_poll
    assert down.status_code == 503 and down.json()["ifs"] is False and down.json()["ifs_error"]


# --------------------------------------------------------------------------- 6: a full disk

@sqlite_only
async def test_6_not_ready_below_the_free_disk_threshold(tmp_path, ifs, service_factory):
    from store.db import free_disk_bytes

    free_mb = free_disk_bytes(str(tmp_path / "notifier.sqlite3")) / (1024 * 1024)
    roomy = await service_factory()
    async with httpx.AsyncClient(base_url=roomy.base_url) as client:
        fine = (await client.get("/readyz")).json()
    await roomy.stop()
    await roomy.db.close()
    # the threshold above what the disk has left stands in for a disk that is full
    settings = load_settings(write_config(tmp_path), env={},
                             overrides={"service": {"min_free_disk_mb": int(free_mb) + 1024}})
    svc = await app.build_service(settings, ifs.vault_secrets())
    await svc.start(background=False)
    try:
        async with httpx.AsyncClient(base_url=svc.base_url) as client:
            full = await client.get("/readyz")
    finally:
        await close(svc)
    assert fine["ready"] and fine["disk"] and fine["disk_free_mb"] > 0
    assert abs(fine["disk_free_mb"] - free_mb) < 512
    assert full.status_code == 503 and full.json()["disk"] is False and full.json()["database"] is True


# --------------------------------------------------------------------------- 7: a bad database file

@sqlite_only
def test_7_a_corrupt_or_read_only_database_is_one_line_and_exit_2(tmp_path):
    cfg = write_config(tmp_path)
    db = tmp_path / "notifier.sqlite3"
    db.write_bytes(os.urandom(64 * 1024))
    db.chmod(0o600)
    started = time.monotonic()
    corrupt = run_cli(cfg, "serve", timeout=30)
    line = one_error_line(corrupt, 2, "service.database")
    assert "notifier.sqlite3" in line and time.monotonic() - started < 30
    one_error_line(run_cli(cfg, "audit", timeout=30), 2, "service.database")

    db.unlink()
    made = run_cli(cfg, "secrets", "set", "ifs.client_id", stdin="notifier\n")
    assert made.returncode == 0, made.stderr
    with read_only(db):
        one_error_line(run_cli(cfg, "serve", timeout=30), 2, "service.database")
    for leftover in tmp_path.glob("notifier.sqlite3-*"):  # from the refused start: empty, safe to drop
        leftover.unlink()
    with read_only(tmp_path):  # the directory: the -wal and -shm files cannot be created
        one_error_line(run_cli(cfg, "serve", timeout=30), 2, "service.database")


# --------------------------------------------------------------------------- 8: keys

def test_8_a_lost_or_replaced_key_is_refused_and_loose_modes_are_fixed(tmp_path):
    cfg = write_config(tmp_path)
    key_file, db = tmp_path / "master.key", tmp_path / "notifier.sqlite3"
    assert run_cli(cfg, "secrets", "set", "ifs.client_secret", stdin="first-secret\n").returncode == 0
    original = key_file.read_bytes()

    key_file.unlink()
    lost = run_cli(cfg, "secrets", "rotate-key")
    one_error_line(lost, 2, "service.key_file")
    assert not key_file.exists()  # no fresh key written behind the refusal

    key_file.write_text(Fernet.generate_key().decode() + "\n")
    key_file.chmod(0o600)
    replaced = run_cli(cfg, "secrets", "set", "ifs.client_id", stdin="client\n")
    one_error_line(replaced, 2, "does not decrypt the stored secret ifs.client_secret")
    one_error_line(run_cli(cfg, "secrets", "rotate-key"), 2, "does not decrypt")
    assert "first-secret" not in replaced.stdout + replaced.stderr

    key_file.write_bytes(original)
    key_file.chmod(0o644)
    if not ON_POSTGRESQL:  # (a database server's files are not ours)
        db.chmod(0o664)
    listed = run_cli(cfg, "secrets", "list")
    assert listed.returncode == 0, listed.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and "had mode 644" in listed.stderr
    assert ON_POSTGRESQL or (stat.S_IMODE(db.stat().st_mode) == 0o600 and "had mode 664" in listed.stderr)
    assert run_cli(cfg, "secrets", "set", "ifs.client_id", stdin="client\n").returncode == 0
    rotated = run_cli(cfg, "secrets", "rotate-key")
    assert rotated.returncode == 0 and "2 secrets re-encrypted" in rotated.stdout


# --------------------------------------------------------------------------- 9: admins by UPN

ADA, BORIS = DEFAULT_MEMBERS[0], DEFAULT_MEMBERS[1]


def as_member(member: dict, text: str, service_url: str) -> dict:
    return channel_message(text, service_url, user=member["id"], aad=member["aadObjectId"])


async def test_9_admins_by_upn_are_resolved_through_teams_and_object_ids_need_no_lookup(
        tmp_path, ifs, connector, service_factory):
    from bot.teams import MemberUpns

    ifs.add_order(company="10")
    by_upn = await service_factory(f'\n[bot]\nadmins = ["{ADA["userPrincipalName"].upper()}"]\n')
    async with httpx.AsyncClient(base_url=by_upn.base_url, timeout=30) as client:
        async def say(member: dict, text: str) -> None:
            r = await client.post("/api/messages", json=as_member(member, text, connector.service_url))
            assert r.status_code in (200, 201), r.text

        await say(BORIS, "link company 10")
        await say(ADA, "link company 10")
        await say(ADA, "pause")  # within the cache's lifetime: no second lookup
        lookups = by_upn.bot._upns.lookups
        await say(ADA, "links")  # not an admin command: no lookup at all
        assert by_upn.bot._upns.lookups == lookups

        clock = FakeClock()
        by_upn.bot._upns = MemberUpns(ttl=600, clock=clock)
        await say(ADA, "resume")
        clock.advance(601)
        await say(ADA, "pause")
        expired_lookups = by_upn.bot._upns.lookups

        by_upn.bot._upns = MemberUpns()
        connector.inject(404, "MemberNotFoundInConversation", 1)  # the stand-in answers this lookup 404
        await say(ADA, "resume")
    rows = [(r.action, r.outcome, r.actor) for r in reversed(await by_upn.audit.recent(limit=50, category="command"))
            if r.action in ("link", "pause", "resume")]
    assert rows == [("link", "denied", BORIS["userPrincipalName"]), ("link", "ok", ADA["userPrincipalName"]),
                    ("pause", "ok", ADA["userPrincipalName"]), ("resume", "ok", ADA["userPrincipalName"]),
                    ("pause", "ok", ADA["userPrincipalName"]), ("resume", "denied", "Alice")], rows
    assert lookups == 2 and expired_lookups == 2
    assert await by_upn.bindings.companies() == ["10"]
    await by_upn.stop()
    await by_upn.db.close()

    by_id = await service_factory(f'\n[bot]\nadmins = ["{ADA["aadObjectId"]}"]\n')
    async with httpx.AsyncClient(base_url=by_id.base_url, timeout=30) as client:
        for member in (BORIS, ADA):
            await client.post("/api/messages", json=as_member(member, "unlink all", connector.service_url))
    outcomes = [(r.action, r.outcome) for r in reversed(await by_id.audit.recent(limit=50, category="command"))
                if r.action == "unlink"]
    assert outcomes == [("unlink", "denied"), ("unlink", "ok")]
    assert by_id.bot._upns.lookups == 0


# --------------------------------------------------------------------------- 10: settings and input edges

BAD_SETTINGS = {
    'log_level = "LOUD"': "service.log_level",
    "port = 99999": "service.port",
    "port = -1": "service.port",
    "ops_port = 70000": "service.ops_port",
    "audit_retention_days = 0": "service.audit_retention_days",
    "min_free_disk_mb = -5": "service.min_free_disk_mb",
}
BAD_DELIVERY = {"workers = 0": "delivery.workers", "workers = -3": "delivery.workers",
                "lease_seconds = 0": "delivery.lease_seconds", "lease_seconds = -10": "delivery.lease_seconds",
                "max_age_hours = 0": "delivery.max_age_hours", "max_age_hours = -1": "delivery.max_age_hours"}


def test_10_bad_settings_and_a_busy_port_are_one_line_and_exit_2(tmp_path):
    base = write_config(tmp_path).read_text()

    def service_line(line: str) -> str:
        name = line.split(" = ")[0]
        kept = [x for x in base.splitlines() if not x.startswith(name + " = ")]
        return "\n".join(kept).replace("[service]", f"[service]\n{line}", 1)

    cases = [(service_line(line), key) for line, key in BAD_SETTINGS.items()]
    cases += [(base + f"\n[delivery]\n{line}\n", key) for line, key in BAD_DELIVERY.items()]
    cases.append(("service = 5\n", "service"))
    for i, (text, key) in enumerate(cases):
        cfg = tmp_path / f"bad{i}.toml"
        cfg.write_text(text)
        one_error_line(run_cli(cfg, "serve", timeout=30), 2, f"config error: {key}:")

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "busy.toml"
        cfg.write_text(base.replace("port = 0", f"port = {port}"))
        secrets = {"ifs.base_url": "http://127.0.0.1:9", **IFS_SECRETS}
        for name, value in secrets.items():
            assert run_cli(cfg, "secrets", "set", name, stdin=value + "\n").returncode == 0
        started = time.monotonic()
        done = run_cli(cfg, "serve", timeout=60)
    one_error_line(done, 2, f"config error: service.port: cannot listen on 127.0.0.1:{port}")
    assert time.monotonic() - started < 60


async def test_10_huge_command_arguments_are_capped_in_audit_and_replies(ifs, connector, service_factory):
    svc = await service_factory()
    huge = "X" * 200_000
    async with httpx.AsyncClient(base_url=svc.base_url, timeout=60) as client:
        for text in (f"unlink company {huge}", f"link company {huge}", f"quiet {huge}", f"nosuch{huge}",
                     "replay 99999999999999999999999", "replay \u00b2", "audit \u00b2"):
            r = await client.post("/api/messages", json=channel_message(text, connector.service_url))
            assert r.status_code in (200, 201), (text[:40], r.status_code)
    sizes = [len(r[0] or "") for r in await svc.db.fetchall("SELECT detail FROM audit WHERE category = 'command'")]
    replies = replies_text(connector)
    assert len(sizes) == 8 and max(sizes) < 1500, sizes  # unlink writes two rows: the removal and the command
    assert len(replies) == 7 and max(len(t) for t in replies) < 1500, [len(t) for t in replies]
    assert replies[0].startswith("This channel was not linked to company " + "X" * 200 + "\u2026")
    assert "There is no delivery 99999999999999999999999 in this channel." in replies[4]
    assert replies[5].startswith("'\u00b2' is not a delivery id.")
    assert replies[6].startswith("'\u00b2' is neither a count")


def test_10_cli_bad_input_is_one_line_and_non_zero(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "a-file").write_text("")
    cases = [
        (("bindings", "import", str(tmp_path / "bad.json")), "not valid JSON"),
        (("bindings", "import", str(tmp_path / "missing.json")), "No such file or directory"),
        (("replay", "--id", "99999999999999999999999"), "out of int64 range" if ON_POSTGRESQL else "too large"),
        (("backup", str(tmp_path / "a-file" / "backup.sqlite3")), "a-file"),
    ]
    for args, needle in cases:
        done = run_cli(cfg, *args)
        assert done.returncode != 0, (args, done.stderr)
        one_error_line(done, done.returncode, needle)
    assert run_cli(cfg, "bindings", "list").returncode == 0  # the database took no harm
