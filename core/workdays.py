"""Business days: Monday to Friday without the configured public holidays."""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, timedelta


def is_business_day(day: date, holidays: Collection[date] = ()) -> bool:
    return day.weekday() < 5 and day not in holidays


def next_business_day(day: date, holidays: Collection[date] = ()) -> date:
    """The first business day after `day`."""
    nxt = day + timedelta(days=1)
    while not is_business_day(nxt, holidays):
        nxt += timedelta(days=1)
    return nxt
