"""Weekly opening hours in a time zone, with holidays and special dates, for `hours` steps.

A flow's `schedules:`, as the `hours` step's reference (ivr/flows/steps/hours.py) shows them.

Times and dates are local to the zone. An interval includes its start and excludes its end;
"24:00" ends a day, and an interval that would cross midnight is written as two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ivr.validation import NAME_RULE, explained_pattern

ScheduleName = explained_pattern(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$", "a schedule name", NAME_RULE)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

MINUTES_PER_DAY = 24 * 60
MAX_INTERVALS_PER_DAY = 24
MAX_DATES = 1000

_INTERVAL = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True, slots=True, order=True)
class Interval:
    """Open from `start` (included) to `end` (excluded), in minutes after local midnight."""

    start: int
    end: int

    def __contains__(self, minute: int) -> bool:
        return self.start <= minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_interval(value: Any) -> Interval:
    if isinstance(value, Interval):
        return value
    match = _INTERVAL.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'expected an interval "HH:MM-HH:MM", got {value!r}')
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    for hours, minutes in ((start_h, start_m), (end_h, end_m)):
        if minutes > 59 or hours * 60 + minutes > MINUTES_PER_DAY:
            raise ValueError(f"{value!r}: {hours:02d}:{minutes:02d} is not a time of day")
    interval = Interval(start_h * 60 + start_m, end_h * 60 + end_m)
    if interval.start >= interval.end:
        raise ValueError(
            f"{value!r}: the start must be before the end "
            "(an interval may not cross midnight: write two)"
        )
    return interval


def _no_overlaps(intervals: tuple[Interval, ...]) -> tuple[Interval, ...]:
    ordered = sorted(intervals)
    for before, after in zip(ordered, ordered[1:]):
        if after.start < before.end:  # touching (12:00-13:00, 13:00-14:00) is fine
            raise ValueError(f"{str(before)!r} overlaps {str(after)!r}")
    return tuple(ordered)


def _parse_date(value: Any) -> date:
    # YAML reads an unquoted 2026-12-25 as a date already; pydantic's own parsing would also take
    # numbers (as Unix times) and datetimes, which in a holiday list can only be mistakes.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a date: {exc}") from None
    raise ValueError(f"expected a date YYYY-MM-DD, got {value!r}")


IntervalText = Annotated[
    Interval,
    PlainValidator(_parse_interval),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _INTERVAL.pattern, "examples": ["09:00-18:00"]}),
]
DayHours = Annotated[
    tuple[IntervalText, ...],
    Field(max_length=MAX_INTERVALS_PER_DAY),
    AfterValidator(_no_overlaps),
]
LocalDate = Annotated[date, BeforeValidator(_parse_date)]


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


class Schedule(BaseModel):
    """Opening hours: `is_open(at)` says whether the schedule is open at an aware datetime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str
    weekly: dict[Weekday, DayHours]
    holidays: frozenset[LocalDate] = Field(default=frozenset(), max_length=MAX_DATES)
    exceptions: dict[LocalDate, DayHours] = Field(default_factory=dict, max_length=MAX_DATES)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        # `localtime` is the server's own zone, so the hours would move with the host.
        if value == "localtime" or value not in _zone_names():
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Paris")
        return value

    @model_validator(mode="after")
    def _holidays_are_not_exceptions(self) -> Schedule:
        both = sorted(self.holidays & self.exceptions.keys())
        if both:
            raise ValueError(
                f"{both[0].isoformat()} is both a holiday and an exception; keep one"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches by name

    def local_time(self, at: datetime) -> datetime:
        """`at` (aware) on the schedule's wall clock."""
        if at.utcoffset() is None:
            raise ValueError("the time to check must be timezone-aware")
        return at.astimezone(self.zone)

    def is_open(self, at: datetime) -> bool:
        local = self.local_time(at)
        day = local.date()
        if day in self.holidays:
            return False
        hours = self.exceptions.get(day)
        if hours is None:
            hours = self.weekly.get(WEEKDAYS[local.weekday()], ())
        # Ends are whole minutes, so comparing the minute of the day keeps the end excluded.
        minute = local.hour * 60 + local.minute
        return any(minute in interval for interval in hours)
