"""Unauthenticated junk against /api/messages of a real service with bot authentication on.

10,000 requests of mixed shapes (no body, not JSON, `null`, `[]`, objects that are no activity, deep
nesting, wrong or missing Content-Type; no Authorization, a non-bearer one, a bearer that is no JWT,
JWTs signed with a stranger's key, expired or for another audience), 50 in flight, while properly signed
messages (`links`) arrive in between. Signing keys come from a local Bot Framework issuer
(tests/jwt_issuer.py), IFS is the simulator, the Bot Connector the stand-in, all on 127.0.0.1.

Counted: answers by status (goal: no 500), log records carrying a traceback (goal 0), audit rows the
rejects added (goal <= 10: one per source, reason and minute), IFS token requests (goal 0), and signed
messages answered and processed (goal: all). A signed message's reply needs an outbound token from
login.microsoftonline.com, which a benchmark cannot reach: that failure is logged per signed message
("turn failed") and counted apart, not as a traceback of the junk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import goal, log, rnd, write_config

APP_ID = "0b5e1a2c-3d4f-4a5b-8c6d-7e8f9a0b1c2d"
TENANT_ID = "5e1c0a7e-0000-4000-8000-00000000c0de"
JSON = {"Content-Type": "application/json"}


class _Tracebacks(logging.Handler):
    """Counts log records that carry a traceback, and the outbound-token turn failures apart."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.tracebacks = 0
        self.turn_failed = 0
        self.warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "bot.teams" and record.getMessage().startswith("turn failed"):
            self.turn_failed += 1
        elif record.exc_info or "Traceback" in record.getMessage():
            self.tracebacks += 1
        elif record.levelno >= logging.WARNING:
            self.warnings += 1


def _shapes(issuer: Any, service_url: str) -> list[tuple[str, bytes, dict[str, str]]]:
    from tests.jwt_issuer import new_rsa_key

    stranger = new_rsa_key()
    activity = (b'{"type": "message", "text": "link company 10", "serviceUrl": "' + service_url.encode()
                + b'", "channelId": "msteams", "from": {"id": "29:x"}, "conversation": {"id": "19:x"},'
                b' "recipient": {"id": "28:bot"}}')
    bodies = {
        "empty": (b"", JSON), "not json": (b"{not json", JSON), "null": (b"null", JSON), "list": (b"[]", JSON),
        "no type": (b'{"text": "hi"}', JSON), "nested": (b'{"type": {"a": [[{"b": null}]]}}', JSON),
        "deep": (b"[" * 50_000 + b"]" * 50_000, JSON), "no content type": (activity, {}),
        "text/plain": (activity, {"Content-Type": "text/plain"}), "activity": (activity, JSON),
    }
    forged = issuer.header(audience=APP_ID, service_url=service_url, signing_key=stranger)
    expired = issuer.header(audience=APP_ID, service_url=service_url, issued_ago=7200, lifetime=3600)
    other_audience = issuer.header(audience="someone-else", service_url=service_url)
    auths: dict[str, dict[str, str]] = {
        "none": {}, "basic": {"Authorization": "Basic dXNlcjpwYXNz"}, "not a jwt": {"Authorization": "Bearer x.y.z"},
        "forged": forged, "expired": expired, "other audience": other_audience,
    }
    return [(f"{a} / {b}", body, headers | auth) for a, auth in auths.items() for b, (body, headers) in bodies.items()]


async def measure(workdir: Path, requests: int, signed: int, concurrency: int = 50) -> dict[str, Any]:
    import app
    from bench.page_cache import EncodedPageCache
    from core.settings import load_settings
    from simulator.connector import ConnectorStandIn
    from simulator.ifs import IfsSimulator
    from simulator.teams_client import channel_message
    from store.audit import AuditLog
    from tests.jwt_issuer import TokenIssuer

    issuer = TokenIssuer().start()
    sim = IfsSimulator(page_cache=EncodedPageCache())
    await sim.start()
    connector = ConnectorStandIn()
    await connector.start()
    settings = load_settings(write_config(workdir, f'\n[bot]\nopenid_metadata_url = "{issuer.metadata_url}"\n'),
                             env={}, overrides={"service": {"dev_mode": False}})
    svc = await app.build_service(settings, sim.vault_secrets() | {
        "bot.app_id": APP_ID, "bot.app_password": "not-used-here", "bot.tenant_id": TENANT_ID})
    counter = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(counter)
    try:
        await svc.start(background=False)
        await asyncio.wait_for(svc.signing_keys.refreshed.wait(), 30)
        shapes = _shapes(issuer, connector.service_url)
        audit = AuditLog(svc.db)
        audit_before = await audit.count("security")
        tokens_before = sim.tokens_issued
        statuses: Counter[int] = Counter()
        signed_statuses: Counter[int] = Counter()
        jobs = itertools.cycle(shapes)
        every = max(1, requests // max(1, signed))
        queue: asyncio.Queue[tuple[bool, bytes, dict[str, str]] | None] = asyncio.Queue()
        for i in range(requests):
            _, body, headers = next(jobs)
            await queue.put((False, body, headers))
            if signed and i % every == every // 2:
                await queue.put((True, b"", {}))
        for _ in range(concurrency):
            await queue.put(None)

        async with httpx.AsyncClient(base_url=svc.base_url, timeout=60,
                                     limits=httpx.Limits(max_connections=concurrency)) as client:
            async def worker() -> None:
                while (job := await queue.get()) is not None:
                    is_signed, body, headers = job
                    if is_signed:
                        headers = issuer.header(audience=APP_ID, service_url=connector.service_url)
                        resp = await client.post("/api/messages", headers=headers,
                                                 json=channel_message("links", connector.service_url))
                        signed_statuses[resp.status_code] += 1
                    else:
                        resp = await client.post("/api/messages", content=body, headers=headers)
                        statuses[resp.status_code] += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            seconds = time.perf_counter() - started
        await svc.rejections.flush()
        audit_rows = await audit.count("security") - audit_before
        counted = await audit.detail_total("security", "count")
        commands = await audit.count("command", "links")
        return {"statuses": dict(sorted(statuses.items())), "signed_statuses": dict(signed_statuses),
                "seconds": seconds, "audit_rows": audit_rows, "rejects_counted": counted,
                "ifs_tokens": sim.tokens_issued - tokens_before, "tracebacks": counter.tracebacks,
                "turn_failed": counter.turn_failed, "warnings": counter.warnings, "commands": commands,
                "shapes": len(shapes)}
    finally:
        root.removeHandler(counter)
        await svc.stop()
        await svc.db.close()
        await connector.stop()
        await sim.stop()
        issuer.stop()


def run(*, quick: bool = False) -> dict[str, Any]:
    requests, signed = (2_000, 10) if quick else (10_000, 40)
    log(f"abuse: {requests} unauthenticated junk requests and {signed} signed messages")
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        m = asyncio.run(measure(Path(tmp), requests, signed))
    signed_ok = sum(n for s, n in m["signed_statuses"].items() if 200 <= s < 300)
    return {
        "junk_requests": requests,
        "shapes": m["shapes"],
        "seconds": rnd(m["seconds"], 1),
        "requests_per_second": rnd((requests + signed) / m["seconds"], 0),
        "answers_by_status": m["statuses"],
        "status_500": goal(m["statuses"].get(500, 0), 0, "=="),
        "tracebacks_logged": goal(m["tracebacks"], 0, "=="),
        "warnings_logged": m["warnings"],
        "audit_rows_added": goal(m["audit_rows"], 10, "<="),
        "rejects_counted_in_audit": goal(m["rejects_counted"], requests, "=="),
        "ifs_token_requests": goal(m["ifs_tokens"], 0, "=="),
        "signed_messages": signed,
        "signed_answered": goal(signed_ok, signed, "=="),
        "signed_processed": goal(m["commands"], signed, "=="),
        "signed_reply_failures_no_internet": m["turn_failed"],
    }


if __name__ == "__main__":
    import json
    import sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
