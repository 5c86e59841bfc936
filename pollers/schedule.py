"""Poll schedules: every N minutes, daily at set times, and tighter polling in month-end finance windows."""

from __future__ import annotations

import calendar
import math
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

from core.settings import ScheduleSettings, parse_hhmm


def business_days(year: int, month: int, holidays: Collection[date] = ()) -> list[date]:
    """Monday to Friday of a month, without the configured public holidays."""
    days = calendar.monthrange(year, month)[1]
    return [d for d in (date(year, month, i) for i in range(1, days + 1)) if d.weekday() < 5 and d not in holidays]


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    m = year * 12 + (month - 1) + by
    return m // 12, m % 12 + 1


def finance_windows(s: ScheduleSettings, around: datetime, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """Windows (local start, local end) overlapping the months around `around`: from the start of the
    last N business days of a month to the end of the first M business days of the next."""
    out = []
    holidays = frozenset(s.holidays)
    local = around.astimezone(tz)
    for by in (-1, 0, 1):
        y, m = _shift(local.year, local.month, by)
        last = business_days(y, m, holidays)[-s.finance_window_last_days:] if s.finance_window_last_days else []
        ny, nm = _shift(y, m, 1)
        first = business_days(ny, nm, holidays)[:s.finance_window_first_days] if s.finance_window_first_days else []
        start_day = last[0] if last else (first[0] if first else None)
        end_day = first[-1] if first else (last[-1] if last else None)
        if start_day is None or end_day is None:
            continue
        start = datetime.combine(start_day, time(0, 0), tz)
        end = datetime.combine(end_day + timedelta(days=1), time(0, 0), tz)
        out.append((start, end))
    return out


def _grid_next(now: datetime, minutes: float) -> datetime:
    step = minutes * 60.0
    ts = now.timestamp()
    nxt = math.floor(ts / step + 1e-9) * step + step
    return datetime.fromtimestamp(nxt, UTC)


def _daily_next(now: datetime, times: tuple[str, ...], tz: ZoneInfo) -> datetime:
    local = now.astimezone(tz)
    best = None
    for offset in (0, 1, 2):
        day = local.date() + timedelta(days=offset)
        for i, t in enumerate(times):
            h, m = parse_hhmm(f"schedule.daily_at[{i}]", t)
            at = datetime.combine(day, time(h, m), tz)
            # a wall time skipped by a DST jump maps through UTC to the first real instant after it
            at = at.astimezone(UTC)
            if at > now and (best is None or at < best):
                best = at
        if best is not None:
            return best
    raise ValueError("no daily time")


def next_fire(s: ScheduleSettings, now: datetime, tz: ZoneInfo) -> datetime:
    """The next poll time strictly after `now` (aware), in UTC."""
    now = now.astimezone(UTC)
    normal = _daily_next(now, s.daily_at, tz) if s.daily_at else _grid_next(now, s.every_minutes)
    if s.finance_window_minutes <= 0:
        return normal
    best = normal
    for start, end in finance_windows(s, now, tz):
        start_u, end_u = start.astimezone(UTC), end.astimezone(UTC)
        if end_u <= now:
            continue
        if start_u > now:
            candidate = start_u
        else:
            candidate = _grid_next(now, s.finance_window_minutes)
            if candidate >= end_u:
                continue
        best = min(best, candidate)
    return best


class PollTrigger(BaseTrigger):
    """APScheduler 3 trigger around next_fire."""

    def __init__(self, settings: ScheduleSettings, tz: ZoneInfo) -> None:
        self.settings = settings
        self.tz = tz
        self.jitter = settings.jitter_seconds or None

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        base = now if previous_fire_time is None else max(now, previous_fire_time)
        fire = next_fire(self.settings, base, self.tz)
        return self._apply_jitter(fire, self.jitter, now)

    def __str__(self) -> str:
        return f"poll[{self.settings.every_minutes}m/{self.settings.finance_window_minutes}m]"
