"""The one rate limiter: sliding windows ("at most N in any T seconds"), several at once."""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence


class WindowLimiter:
    """Admits an event only when every window (count, seconds) still has room.

    Keeps the admission times of the longest window; memory is bounded by its count.
    Time comes from an injected monotonic function, so tests drive it with a fake clock.
    """

    def __init__(self, windows: Sequence[tuple[int, float]], now: Callable[[], float]) -> None:
        self._now = now
        self._times: deque[float] = deque()
        self._blocked_until = 0.0
        self.set_windows(windows)

    def set_windows(self, windows: Sequence[tuple[int, float]]) -> None:
        """Change the limits, keeping what was admitted (a replica's share of an app-wide limit changes)."""
        if not windows or any(count <= 0 or seconds <= 0 for count, seconds in windows):
            raise ValueError("windows need positive counts and durations")
        self._windows = sorted(((int(c), float(s)) for c, s in windows), key=lambda w: w[1])
        self._keep = max(c for c, _ in self._windows)
        self._horizon = max(s for _, s in self._windows)
        while len(self._times) > self._keep:
            self._times.popleft()

    @property
    def windows(self) -> tuple[tuple[int, float], ...]:
        return tuple(self._windows)


    def seed(self, times: Sequence[float], *, replace: bool = False) -> None:
        """Count earlier admissions (on this limiter's clock) made elsewhere: sends by another process.
        `replace`: they are the whole history (they include this limiter's own)."""
        merged = sorted([*([] if replace else self._times), *times])
        self._times = deque(merged[-self._keep:])

    def wait_time(self, now: float | None = None) -> float:
        """Seconds until one more event would be admitted (0.0 = now)."""
        t = self._now() if now is None else now
        while self._times and self._times[0] <= t - self._horizon:
            self._times.popleft()
        wait = self._blocked_until - t
        n = len(self._times)
        for count, seconds in self._windows:
            if n >= count:
                # the count-th most recent admission must leave this window first
                oldest_in_way = self._times[n - count]
                wait = max(wait, oldest_in_way + seconds - t)
        return max(0.0, wait)

    def try_acquire(self, at: float | None = None) -> float:
        """Admit now (`at`: this clock's now, read by the caller) and return 0.0, or admit nothing and
        return the wait in seconds."""
        t = self._now() if at is None else at
        wait = self.wait_time(t)
        if wait <= 0.0:
            self._times.append(t)
            if len(self._times) > self._keep:
                self._times.popleft()
        return wait

    def done(self, admitted: float) -> None:
        """The event admitted at `admitted` is complete: from now on it counts as made now. The far end
        (Teams) counts a request when it receives it, somewhere between our admission and its answer;
        counted from the answer, the windows hold however the network delayed each request."""
        try:
            self._times.remove(admitted)
        except ValueError:
            return  # already past the longest window
        t = max(admitted, self._now())
        self._times.insert(bisect_right(self._times, t), t)

    def penalise(self, seconds: float) -> None:
        """Admit nothing for `seconds` (the server answered 429 with Retry-After)."""
        self._blocked_until = max(self._blocked_until, self._now() + seconds)


class MultiLimiter:
    """Several limiters that must all admit (e.g. per channel and per app)."""

    def __init__(self, *limiters: WindowLimiter) -> None:
        self._limiters = limiters
        self.admitted = 0.0  # the time of the last admission (all limiters share one clock)

    def try_acquire(self) -> float:
        t = self._limiters[0]._now()
        wait = max(lim.wait_time(t) for lim in self._limiters)
        if wait > 0:
            return wait
        for lim in self._limiters:
            lim.try_acquire(t)
        self.admitted = t
        return 0.0

    def done(self, admitted: float) -> None:
        for lim in self._limiters:
            lim.done(admitted)
