"""The door of /api/messages: cheap checks before botbuilder sees a request, and rejected requests
counted per (source, reason, minute) instead of logged and audited one by one.

botbuilder parses the body before it authenticates, and answers anything it cannot parse with an
exception (a 500 and a traceback per request). Anyone on the internet can reach this endpoint, so what
an unauthenticated request costs must stay small: no body is read without a plausible bearer token when
authentication is on, and a flood of rejects makes one audit row and one log line per source, reason and
minute.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.clock import Clock
from store.audit import AuditLog

log = logging.getLogger(__name__)

NO_TOKEN = "no token"
MALFORMED_TOKEN = "malformed token"
INVALID_TOKEN = "invalid token"
MALFORMED_REQUEST = "malformed request"

MAX_TOKEN_CHARS = 16 * 1024  # Bot Connector tokens are about 1.5 KB


def token_problem(authorization: str | None) -> str | None:
    """None when the Authorization header could hold a Bot Framework token (a JWT the SDK then checks),
    else the reason to refuse it without asking the SDK."""
    if not authorization:
        return NO_TOKEN
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return MALFORMED_TOKEN
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return MALFORMED_TOKEN
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return MALFORMED_TOKEN
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return MALFORMED_TOKEN
    return None


def parse_activity(content_type: str, body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object with a `type`, or None when it is not one."""
    if content_type != "application/json":
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: [[[[...]]]] nested deeper than the parser goes
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str) or not data["type"]:
        return None
    return data


@dataclass
class _Bucket:
    source: str
    reason: str
    minute: int
    count: int = 1
    row_id: int | None = None
    flushed: bool = False


class RejectedRequests:
    """Counts rejected requests per (source, reason, minute of the clock).

    The first reject of a bucket writes its audit row (count 1) and one warning, so an operator sees an
    attack as it starts; later ones only count. When the minute rolls over, and on stop, each bucket's
    final count is written into its row. At most MAX_SOURCES sources are told apart per minute; beyond
    that they share one bucket per reason, so a spoofed-address flood cannot grow memory either.
    """

    MAX_SOURCES = 1000
    OTHERS = "(other sources)"

    def __init__(self, audit: AuditLog, clock: Clock) -> None:
        self._audit = audit
        self._clock = clock
        self._minute: int | None = None
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = asyncio.Lock()  # an insert and a flush never interleave
        self.total = 0

    async def add(self, source: str, reason: str) -> None:
        self.total += 1
        minute = int(self._clock.time() // 60)
        if self._minute is not None and minute != self._minute:
            self._minute = minute
            await self.flush()
        self._minute = minute
        key = (source, reason)
        if key not in self._buckets and len(self._buckets) >= self.MAX_SOURCES:
            key = (self.OTHERS, reason)
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.count += 1
            return
        bucket = self._buckets[key] = _Bucket(key[0], reason, minute)
        log.warning("inbound request refused from %s: %s (more from there this minute are only counted)",
                    key[0], reason)
        async with self._lock:
            if not bucket.flushed:
                bucket.row_id = await self._audit.record("security", "inbound rejected", "denied",
                                                         **self._detail(bucket, 1))

    async def tick(self) -> None:
        """Flush when the minute has rolled over since the last reject (called periodically)."""
        if self._minute is not None and int(self._clock.time() // 60) != self._minute:
            self._minute = None
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            buckets, self._buckets = self._buckets, {}
            for bucket in buckets.values():
                bucket.flushed = True
                if bucket.row_id is None:
                    await self._audit.record("security", "inbound rejected", "denied",
                                             **self._detail(bucket, bucket.count))
                elif bucket.count > 1:
                    await self._audit.set_detail(bucket.row_id, **self._detail(bucket, bucket.count))

    @staticmethod
    def _detail(bucket: _Bucket, count: int) -> dict[str, Any]:
        minute = datetime.fromtimestamp(bucket.minute * 60, UTC).strftime("%Y-%m-%dT%H:%MZ")
        return {"remote": bucket.source, "reason": bucket.reason, "count": count, "minute": minute}
