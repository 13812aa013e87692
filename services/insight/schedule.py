"""When the snapshot sweeper fires (spec: insight.md, Snapshots).

`SNAPSHOT_CRON` has 6 fields (sec min hour dom mon dow, default `0 0 23 * * *`) and is read as
wall-clock time in `SNAPSHOT_TZ` (IANA, default `Asia/Singapore`). Around DST changes:
- a wall time that happens twice (clocks go back) fires once, at its first occurrence;
- a wall time that does not exist (clocks go forward) fires once, shifted forward by the gap
  (01:30 on the spring-forward night in Lisbon fires at 02:30 WEST = 01:30 UTC).
All datetimes in and out are timezone-aware; results are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

DEFAULT_SNAPSHOT_CRON = "0 0 23 * * *"
DEFAULT_SNAPSHOT_TZ = "Asia/Singapore"
_CRON_FORM = "6 fields 'sec min hour dom mon dow', e.g. '0 0 23 * * *'"
_TZ_FORM = "an IANA zone name, e.g. 'Asia/Singapore'"
_OFFSET_PROBE = [timedelta(hours=h) for h in range(-48, 49, 3)]


class ScheduleError(ValueError):
    """Invalid SNAPSHOT_CRON or SNAPSHOT_TZ: a start-up error. `variable` names the setting,
    `expected` describes its form, `got` is the rejected value."""

    def __init__(self, variable: str, problem: str, expected: str, got: str) -> None:
        super().__init__(f"{variable}={got!r} {problem}: expected {expected}")
        self.variable = variable
        self.expected = expected
        self.got = got


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True)
class SnapshotSchedule:
    cron: str
    zone: ZoneInfo

    @classmethod
    def parse(cls, cron: str = DEFAULT_SNAPSHOT_CRON, tz: str = DEFAULT_SNAPSHOT_TZ) -> SnapshotSchedule:
        """Validate the cron expression and the zone; raise ScheduleError naming the variable."""
        fields = cron.split()
        if len(fields) != 6 or not croniter.is_valid(" ".join(fields), second_at_beginning=True):
            raise ScheduleError("SNAPSHOT_CRON", "is invalid", _CRON_FORM, cron)
        try:
            zone = ZoneInfo(tz.strip())
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError("SNAPSHOT_TZ", "is invalid", _TZ_FORM, tz) from exc
        schedule = cls(" ".join(fields), zone)
        try:  # "0 0 0 30 2 *" is well-formed but never fires
            croniter(schedule.cron, datetime(2000, 1, 1), second_at_beginning=True).get_next(datetime)
        except (CroniterBadDateError, CroniterBadCronError) as exc:
            raise ScheduleError("SNAPSHOT_CRON", "never fires", _CRON_FORM, cron) from exc
        return schedule

    def _offset_spread(self, instant: datetime) -> timedelta:
        """How far the zone's UTC offset moves within ±2 days of `instant` (0 without DST)."""
        offsets = [(instant + step).astimezone(self.zone).utcoffset() or timedelta(0) for step in _OFFSET_PROBE]
        return max(offsets) - min(offsets)

    def _to_utc(self, wall: datetime) -> datetime:
        return wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)

    def next_firing(self, after: datetime) -> datetime:
        """The first firing strictly after `after`, in UTC.

        Cron matches are enumerated as naive wall-clock times and mapped to UTC (fold=0). That
        mapping is not monotonic across a DST change, so the scan starts one offset-spread early
        and continues one spread past the first hit, keeping the earliest instant > after.
        """
        _require_aware("after", after)
        wall = after.astimezone(self.zone).replace(tzinfo=None, fold=0)
        matches = croniter(self.cron, wall - self._offset_spread(after), second_at_beginning=True)
        best: datetime | None = None
        horizon: datetime | None = None
        while True:
            candidate = matches.get_next(datetime)
            if horizon is not None and candidate > horizon:
                return best  # type: ignore[return-value]
            instant = self._to_utc(candidate)
            if instant > after and (best is None or instant < best):
                best = instant
                horizon = candidate + self._offset_spread(instant)

    def firings_between(self, start: datetime, end: datetime, limit: int = 10_000) -> list[datetime]:
        """Firings f with start < f <= end, earliest first, in UTC (at most `limit`)."""
        _require_aware("start", start)
        _require_aware("end", end)
        firings: list[datetime] = []
        cursor = start
        while len(firings) < limit:
            cursor = self.next_firing(cursor)
            if cursor > end:
                break
            firings.append(cursor)
        return firings
