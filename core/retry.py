"""The one retry policy: capped exponential backoff with full jitter, bounded by attempts and age."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float = 0.5  # seconds before the first retry (upper bound of the jitter window)
    cap: float = 60.0  # no single wait longer than this
    max_attempts: int = 6  # total tries including the first; 0 = unbounded (age decides)
    max_elapsed: float = 120.0  # give up once this many seconds passed since the first try

    def delay(self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Wait before try number `attempt + 1` (attempt counts from 1).

        A server's Retry-After wins over the computed backoff (it knows when it can take more).
        """
        if retry_after is not None and retry_after >= 0:
            return float(retry_after)
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return (rng or random).uniform(0, ceiling)

    def gives_up(self, attempt: int, elapsed: float, next_delay: float = 0.0) -> bool:
        """True when try `attempt` was the last one allowed."""
        if self.max_attempts and attempt >= self.max_attempts:
            return True
        return elapsed + next_delay > self.max_elapsed
