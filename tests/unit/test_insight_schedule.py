"""Unit tests for services.insight.schedule, the snapshot cron (spec: insight.md, Snapshots)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.insight.schedule import (
    DEFAULT_SNAPSHOT_CRON,
    DEFAULT_SNAPSHOT_TZ,
    ScheduleError,
    SnapshotSchedule,
)

UTC = timezone.utc
LISBON = ZoneInfo("Europe/Lisbon")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_defaults_are_23h_in_singapore() -> None:
    schedule = SnapshotSchedule.parse()
    assert (DEFAULT_SNAPSHOT_CRON, DEFAULT_SNAPSHOT_TZ) == ("0 0 23 * * *", "Asia/Singapore")
    assert schedule.zone == ZoneInfo("Asia/Singapore")
    # 23:00 SGT (+08:00, no DST) is 15:00 UTC every day
    assert schedule.next_firing(utc(2025, 6, 1, 14, 59, 59)) == utc(2025, 6, 1, 15)
    assert schedule.next_firing(utc(2025, 6, 1, 15)) == utc(2025, 6, 2, 15)  # strictly after
    assert schedule.firings_between(utc(2025, 12, 30), utc(2026, 1, 2)) == [
        utc(2025, 12, 30, 15),
        utc(2025, 12, 31, 15),
        utc(2026, 1, 1, 15),
    ]


def test_first_field_is_seconds() -> None:
    schedule = SnapshotSchedule.parse("30 15 10 * * *", "Asia/Singapore")
    assert schedule.next_firing(utc(2025, 1, 1)) == utc(2025, 1, 1, 2, 15, 30)


def test_results_are_utc_whatever_the_input_zone() -> None:
    schedule = SnapshotSchedule.parse("0 0 23 * * *", "Asia/Singapore")
    after = datetime(2025, 6, 1, 22, 0, tzinfo=ZoneInfo("Asia/Singapore"))
    firing = schedule.next_firing(after)
    assert firing == utc(2025, 6, 1, 15) and firing.tzinfo is UTC


def test_lisbon_daily_23h_across_both_dst_changes() -> None:
    schedule = SnapshotSchedule.parse("0 0 23 * * *", "Europe/Lisbon")
    # 2025-03-30 01:00 UTC clocks go forward (WET +00 -> WEST +01)
    assert schedule.firings_between(utc(2025, 3, 28), utc(2025, 4, 1)) == [
        utc(2025, 3, 28, 23),
        utc(2025, 3, 29, 23),
        utc(2025, 3, 30, 22),
        utc(2025, 3, 31, 22),
    ]
    # 2025-10-26 01:00 UTC clocks go back
    assert schedule.firings_between(utc(2025, 10, 24), utc(2025, 10, 28)) == [
        utc(2025, 10, 24, 22),
        utc(2025, 10, 25, 22),
        utc(2025, 10, 26, 23),
        utc(2025, 10, 27, 23),
    ]


def test_nonexistent_wall_time_fires_once_shifted_by_the_gap() -> None:
    schedule = SnapshotSchedule.parse("0 30 1 * * *", "Europe/Lisbon")  # 01:30 does not exist on 2025-03-30
    firings = schedule.firings_between(utc(2025, 3, 29), utc(2025, 3, 31, 12))
    assert firings == [utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1, 30), utc(2025, 3, 31, 0, 30)]
    assert [f.astimezone(LISBON).strftime("%H:%M") for f in firings] == ["01:30", "02:30", "01:30"]
    # asking from inside the shifted hour still finds it
    assert schedule.next_firing(utc(2025, 3, 30, 1, 10)) == utc(2025, 3, 30, 1, 30)


def test_repeated_wall_time_fires_once_at_first_occurrence() -> None:
    schedule = SnapshotSchedule.parse("0 30 1 * * *", "Europe/Lisbon")  # 01:30 happens twice on 2025-10-26
    assert schedule.firings_between(utc(2025, 10, 25, 12), utc(2025, 10, 27, 12)) == [
        utc(2025, 10, 26, 0, 30),
        utc(2025, 10, 27, 1, 30),
    ]
    # from inside the repeated hour, the second 01:30 is skipped
    assert schedule.next_firing(utc(2025, 10, 26, 1, 10)) == utc(2025, 10, 27, 1, 30)


def test_sub_hourly_schedule_is_strictly_increasing_across_spring_forward() -> None:
    schedule = SnapshotSchedule.parse("0 */30 * * * *", "Europe/Lisbon")
    firings = schedule.firings_between(utc(2025, 3, 30, 0), utc(2025, 3, 30, 3))
    assert firings == [utc(2025, 3, 30, 0, 30) + timedelta(minutes=30 * i) for i in range(6)]


@given(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)))
def test_lisbon_daily_firing_is_next_23h_local(after: datetime) -> None:
    firing = SnapshotSchedule.parse("0 0 23 * * *", "Europe/Lisbon").next_firing(after)
    local = firing.astimezone(LISBON)
    assert firing > after and firing.tzinfo is UTC
    assert (local.hour, local.minute, local.second) == (23, 0, 0)
    assert firing - after <= timedelta(hours=25)


def test_firings_between_is_half_open_and_limited() -> None:
    schedule = SnapshotSchedule.parse("0 0 * * * *", "Asia/Singapore")
    assert schedule.firings_between(utc(2025, 1, 1, 0), utc(2025, 1, 1, 2)) == [utc(2025, 1, 1, 1), utc(2025, 1, 1, 2)]
    assert len(schedule.firings_between(utc(2025, 1, 1), utc(2025, 2, 1), limit=5)) == 5
    assert schedule.firings_between(utc(2025, 1, 1, 2), utc(2025, 1, 1, 1)) == []


@pytest.mark.parametrize(
    ("cron", "tz", "variable"),
    [
        ("0 0 23 * *", "Asia/Singapore", "SNAPSHOT_CRON"),  # 5 fields
        ("0 0 23 * * * 2025", "Asia/Singapore", "SNAPSHOT_CRON"),  # 7 fields
        ("@daily", "Asia/Singapore", "SNAPSHOT_CRON"),
        ("0 0 25 * * *", "Asia/Singapore", "SNAPSHOT_CRON"),
        ("61 0 23 * * *", "Asia/Singapore", "SNAPSHOT_CRON"),
        ("0 0 0 30 2 *", "Asia/Singapore", "SNAPSHOT_CRON"),  # never fires
        ("", "Asia/Singapore", "SNAPSHOT_CRON"),
        ("0 0 23 * * *", "Mars/Olympus", "SNAPSHOT_TZ"),
        ("0 0 23 * * *", "", "SNAPSHOT_TZ"),
        ("0 0 23 * * *", "../etc/passwd", "SNAPSHOT_TZ"),
    ],
)
def test_bad_cron_or_zone_is_a_schedule_error_naming_the_variable(cron: str, tz: str, variable: str) -> None:
    with pytest.raises(ScheduleError, match=variable) as info:
        SnapshotSchedule.parse(cron, tz)
    assert isinstance(info.value, ValueError)
    assert ("sec min hour dom mon dow" if variable == "SNAPSHOT_CRON" else "IANA") in str(info.value)


def test_naive_datetimes_are_rejected() -> None:
    schedule = SnapshotSchedule.parse()
    with pytest.raises(ValueError, match="aware"):
        schedule.next_firing(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        schedule.firings_between(utc(2025, 1, 1), datetime(2025, 1, 2))
