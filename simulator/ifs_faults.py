"""What the simulator was asked and how it misbehaves: the request log, queued faults (fail, drop,
slow, malformed, empty), standing listing faults (page caps, endless paging) and a rate limit."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class RequestLog:
    method: str
    path: str
    query: dict[str, str]
    status: int  # 0 when the connection was dropped without a response
    monotonic: float  # time.monotonic() when the request arrived
    client_id: str | None  # from the bearer token (data) or the form (token endpoint)


FaultAction = Literal["fail", "drop", "slow", "malformed", "empty"]
_DEFAULT_CODES = {
    429: "TOO_MANY_REQUESTS",
    500: "ODP_INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}
FAULT_MESSAGES = {
    "MI_MODIFIED_ERROR": "Service metadata already modified.",
    "TOO_MANY_REQUESTS": "Too many requests.",
    "SERVICE_UNAVAILABLE": "Service unavailable.",
}


@dataclass(slots=True)
class _Fault:
    action: FaultAction
    remaining: int
    status: int = 200
    code: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    path: str | None = None
    token: bool = False

    def matches(self, path: str, is_token: bool) -> bool:
        if self.remaining <= 0 or (is_token and not self.token):
            return False
        return self.path is None or self.path in path

    def describe(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("action", "remaining", "status", "code", "retry_after", "seconds", "path", "token")
        }


class FaultPlan:
    """Queued failures for the next requests, and an optional server-side rate limit.

    Each fault counts down over the data requests whose path or decoded query string contains `path`
    (any when None; "$skip=20" picks one page of a listing); with
    `token=True` the token endpoint counts too. Several slow faults add up; at most one fail, drop,
    malformed or empty fault applies to a request, the earliest queued.

    Two standing behaviours of a collection (listing) answer last until `clear()`: `cap_top(n)` (at most
    n rows per answer, whatever `$top` asks, and no next link: a server with a silent page cap) and
    `endless_next_links()` (every answer carries a fresh, distinct next link: paging that never ends)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._faults: list[_Fault] = []
        self.per_minute: int | None = None
        self._window: deque[float] = deque()
        self._top_caps: list[tuple[str | None, int]] = []
        self._endless: list[str | None] = []
        self.endless_links = 0  # next links made up by endless_next_links so far

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        *,
        retry_after: float | None | Literal["auto"] = "auto",
        code: str | None = None,
        path: str | None = None,
        token: bool = False,
    ) -> None:
        """Answer the next `n` matching requests with `status`; 429 carries `Retry-After: 1` unless told."""
        if retry_after == "auto":
            retry_after = 1.0 if status == 429 else None
        code = code or _DEFAULT_CODES.get(status, f"HTTP_{status}")
        self._faults.append(
            _Fault("fail", n, status=status, code=code, retry_after=retry_after, path=path, token=token)
        )

    def drop_next(self, n: int = 1, *, path: str | None = None, token: bool = False) -> None:
        self._faults.append(_Fault("drop", n, path=path, token=token))

    def slow_next(self, n: int, seconds: float, *, path: str | None = None, token: bool = False) -> None:
        self._faults.append(_Fault("slow", n, seconds=seconds, path=path, token=token))

    def malformed_next(self, n: int = 1, *, path: str | None = None, token: bool = False) -> None:
        self._faults.append(_Fault("malformed", n, path=path, token=token))

    def empty_next(self, n: int = 1, *, path: str | None = None) -> None:
        """Answer the next `n` matching requests `200 {"value": []}`: an empty listing, as IFS answers for
        a company the service user is not granted or on a transient glitch. Match listings only with a
        path such as "PurchaseOrderSet?" (a read by key has no query string)."""
        self._faults.append(_Fault("empty", n, path=path))

    def cap_top(self, n: int, *, path: str | None = None) -> None:
        """From now on, collection answers (matching `path`) hold at most `n` rows and no next link."""
        if n < 1:
            raise ValueError("cap_top needs n >= 1")
        self._top_caps.append((path, n))

    def endless_next_links(self, *, path: str | None = None) -> None:
        """From now on, every collection answer (matching `path`) carries a fresh, distinct next link."""
        self._endless.append(path)

    def top_cap(self, target: str) -> int | None:
        """The smallest row cap that applies to a collection request, if any."""
        caps = [n for path, n in self._top_caps if path is None or path in target]
        return min(caps) if caps else None

    def endless(self, target: str) -> bool:
        return any(path is None or path in target for path in self._endless)

    def rate_limit(self, per_minute: int | None) -> None:
        """Answer 429 + Retry-After beyond `per_minute` data requests in any 60 s; None or 0 turns it off."""
        self.per_minute = per_minute or None
        self._window.clear()

    def clear(self) -> None:
        self._faults.clear()
        self._top_caps.clear()
        self._endless.clear()
        self.rate_limit(None)

    @property
    def pending(self) -> list[dict[str, Any]]:
        standing = [{"action": "cap_top", "top": n, "path": path} for path, n in self._top_caps]
        standing += [{"action": "endless_next_links", "path": path} for path in self._endless]
        return [f.describe() for f in self._faults if f.remaining > 0] + standing

    def take(self, path: str, is_token: bool) -> tuple[float, _Fault | None]:
        """Seconds to delay, and the one failure (fail/drop/malformed) this request gets, if any."""
        delay = 0.0
        chosen: _Fault | None = None
        for fault in self._faults:
            if not fault.matches(path, is_token):
                continue
            if fault.action == "slow":
                fault.remaining -= 1
                delay += fault.seconds
            elif chosen is None:
                fault.remaining -= 1
                chosen = fault
        self._faults = [f for f in self._faults if f.remaining > 0]
        return delay, chosen

    def over_rate(self) -> float | None:
        """Retry-After seconds when the rate limit is exceeded, else None (and the request is counted)."""
        if self.per_minute is None:
            return None
        now = self._clock()
        while self._window and self._window[0] <= now - 60.0:
            self._window.popleft()
        if len(self._window) >= self.per_minute:
            return max(1.0, math.ceil(self._window[0] + 60.0 - now))
        self._window.append(now)
        return None
