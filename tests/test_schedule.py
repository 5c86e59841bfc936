"""Schedules: interval, daily times, month-end finance windows across a month end and a DST change."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.errors import ConfigError
from core.settings import ScheduleSettings, load_settings
from pollers.schedule import PollTrigger, business_days, finance_windows, next_fire

STHLM = ZoneInfo("Europe/Stockholm")


def fires(s: ScheduleSettings, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = next_fire(s, t, STHLM)
        out.append(t)
    return out


def test_interval_grid_is_aligned_and_strictly_after_now():
    s = ScheduleSettings(every_minutes=15)
    got = fires(s, datetime(2026, 11, 27, 9, 7, tzinfo=UTC), 3)
    assert got == [datetime(2026, 11, 27, 9, 15, tzinfo=UTC), datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
                   datetime(2026, 11, 27, 9, 45, tzinfo=UTC)]


def test_daily_times_follow_local_time_across_dst():
    s = ScheduleSettings(daily_at=("07:30",))
    got = fires(s, datetime(2027, 3, 26, 12, 0, tzinfo=UTC), 3)  # DST starts 2027-03-28 in Stockholm
    assert [g.astimezone(STHLM).strftime("%m-%d %H:%M") for g in got] == ["03-27 07:30", "03-28 07:30", "03-29 07:30"]
    assert got[1] - got[0] == timedelta(hours=23)  # the short night


def test_finance_window_across_month_end_and_dst_change():
    # October 2027: last three business days Wed 27 - Fri 29; DST ends Sun 31; first two of November: Mon 1, Tue 2
    s = ScheduleSettings(every_minutes=60, finance_window_minutes=5, finance_window_last_days=3,
                         finance_window_first_days=2)
    start, end = next(w for w in finance_windows(s, datetime(2027, 10, 30, tzinfo=UTC), STHLM)
                       if w[0].month == 10)
    assert (start.day, end.day, end.month) == (27, 3, 11)

    before = fires(s, datetime(2027, 10, 26, 21, 0, tzinfo=STHLM), 4)
    assert [f.astimezone(STHLM).strftime("%d %H:%M") for f in before] == ["26 22:00", "26 23:00", "27 00:00",
                                                                         "27 00:05"]
    across_dst = fires(s, datetime(2027, 10, 31, 2, 50, tzinfo=STHLM, fold=0), 20)
    gaps = {b - a for a, b in zip(across_dst, across_dst[1:], strict=False)}
    assert gaps == {timedelta(minutes=5)}  # real time keeps a 5 minute rhythm through the repeated hour

    closing = fires(s, datetime(2027, 11, 2, 23, 50, tzinfo=STHLM), 4)
    assert [f.astimezone(STHLM).strftime("%d %H:%M") for f in closing] == ["02 23:55", "03 00:00", "03 01:00",
                                                                          "03 02:00"]


def test_public_holidays_are_not_business_days_for_the_finance_window(tmp_path):
    # December 2026 ends Thu 31; with 24, 25 and 31 as holidays the last three business days are
    # Mon 28 - Wed 30; 1 January is a holiday too, so the first two of January are Mon 4 and Tue 5
    cfg = tmp_path / "n.toml"
    cfg.write_text("[schedule]\nfinance_window_minutes = 5\n"
                   'holidays = [2026-12-24, "2026-12-25", 2026-12-31, 2027-01-01]\n')
    s = load_settings(cfg, env={}).schedule
    start, end = next(w for w in finance_windows(s, datetime(2026, 12, 15, tzinfo=UTC), STHLM)
                      if w[0].month == 12)
    assert (start.date(), end.date()) == (date(2026, 12, 28), date(2027, 1, 6))
    without = ScheduleSettings(finance_window_minutes=5)
    start, end = next(w for w in finance_windows(without, datetime(2026, 12, 15, tzinfo=UTC), STHLM)
                      if w[0].month == 12)
    assert (start.date(), end.date()) == (date(2026, 12, 29), date(2027, 1, 5))
    assert business_days(2026, 12, s.holidays)[-1] == date(2026, 12, 30)

    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={"NOTIFIER__SCHEDULE__HOLIDAYS": "2026-12-24,24.12.2026"})
    assert err.value.key == "schedule.holidays[1]"


def test_trigger_wraps_next_fire_for_apscheduler():
    s = ScheduleSettings(every_minutes=30)
    trig = PollTrigger(s, STHLM)
    now = datetime(2026, 11, 27, 10, 1, tzinfo=UTC)
    assert trig.get_next_fire_time(None, now) == datetime(2026, 11, 27, 10, 30, tzinfo=UTC)
