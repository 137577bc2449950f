"""Schedules and the `hours` step: open or closed by the schedule's wall clock, never the server's.

Every check names an exact instant in UTC, the way `run.clock()` gives it, so each test says which
local time it means.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ivr.flows.http import AiohttpClient
from ivr.flows.loader import FlowLoadError, load_flow_file
from ivr.flows.model import Flow
from ivr.flows.runner import Outcome, run_flow
from ivr.flows.schedules import Schedule
from ivr.flows.step import Contact, Run
from ivr.flows.steps.hours import HoursStep
from ivr.validation import describe_errors

SUPPORT = """
timezone: Europe/Paris
weekly:
  mon: ["13:30-18:00", "09:00-12:30"]
  thu: ["09:00-18:00"]
  fri: ["09:00-18:00"]
  sat: ["18:00-24:00"]
  sun: []
holidays: ["2026-12-25", 2027-01-01]
exceptions:
  "2026-12-24": ["09:00-13:00"]
  2026-12-20: ["10:00-12:00"]
  "2026-12-31": []
"""


def schedule(text: str = SUPPORT) -> Schedule:
    return Schedule.model_validate(yaml.safe_load(text))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def problems(text: str) -> list[str]:
    """The schedule's validation errors, as the loader prints them after `schedules.<name>.`"""
    with pytest.raises(ValidationError) as error:
        schedule(text)
    return describe_errors(error.value, Schedule)


# Paris is UTC+1 in January and December.


def test_open_from_the_first_minute_of_an_interval_to_just_before_its_end() -> None:
    support = schedule()
    assert not support.is_open(utc(2026, 1, 5, 7, 59, 59))  # Monday 08:59:59
    assert support.is_open(utc(2026, 1, 5, 8, 0))  # 09:00
    assert support.is_open(utc(2026, 1, 5, 16, 59, 59))  # 17:59:59
    assert not support.is_open(utc(2026, 1, 5, 17, 0))  # 18:00


def test_a_day_with_two_intervals_is_closed_between_them() -> None:
    support = schedule()
    assert support.is_open(utc(2026, 1, 5, 11, 29, 59))  # 12:29:59
    assert not support.is_open(utc(2026, 1, 5, 11, 30))  # 12:30, lunch
    assert not support.is_open(utc(2026, 1, 5, 12, 29, 59))
    assert support.is_open(utc(2026, 1, 5, 12, 30))  # 13:30


def test_days_listed_empty_or_not_listed_are_closed() -> None:
    support = schedule()
    assert not support.is_open(utc(2026, 1, 4, 11, 0))  # Sunday: []
    assert not support.is_open(utc(2026, 1, 6, 11, 0))  # Tuesday: not listed


def test_24_00_ends_the_day_and_the_next_day_follows_its_own_hours() -> None:
    support = schedule()
    assert support.is_open(utc(2026, 1, 10, 22, 59, 59))  # Saturday 23:59:59
    assert not support.is_open(utc(2026, 1, 10, 23, 0))  # Sunday 00:00


def test_a_holiday_is_closed_all_day_on_its_local_date() -> None:
    support = schedule()
    assert support.is_open(utc(2026, 12, 18, 11, 0))  # an ordinary Friday
    assert not support.is_open(utc(2026, 12, 25, 11, 0))  # Christmas, a Friday
    assert not support.is_open(utc(2027, 1, 1, 11, 0))  # written as a YAML date


def test_an_exception_replaces_the_weekly_hours_of_its_date() -> None:
    support = schedule()
    assert support.is_open(utc(2026, 12, 24, 11, 59, 59))  # Thursday 12:59:59, a short day
    assert not support.is_open(utc(2026, 12, 24, 12, 0))  # 13:00, open on other Thursdays
    assert support.is_open(utc(2026, 12, 20, 9, 0))  # Sunday 10:00, open this once
    assert not support.is_open(utc(2026, 12, 31, 11, 0))  # Thursday, closed this once


NEW_YORK = """
timezone: America/New_York
weekly:
  sat: ["09:00-17:00"]
  sun: ["01:00-02:00", "02:00-03:00", "09:00-17:00"]
"""


def test_the_spring_forward_day_in_new_york_keeps_local_hours() -> None:
    new_york = schedule(NEW_YORK)
    # Saturday 2026-03-07 is on EST (UTC-5), Sunday 2026-03-08 from 03:00 on EDT (UTC-4).
    assert not new_york.is_open(utc(2026, 3, 7, 13, 59))
    assert new_york.is_open(utc(2026, 3, 7, 14, 0))
    assert not new_york.is_open(utc(2026, 3, 8, 12, 59))
    assert new_york.is_open(utc(2026, 3, 8, 13, 0))
    assert new_york.is_open(utc(2026, 3, 8, 20, 59))
    assert not new_york.is_open(utc(2026, 3, 8, 21, 0))


def test_hours_inside_the_skipped_hour_never_open_and_a_repeated_hour_opens_twice() -> None:
    new_york = schedule(NEW_YORK)
    assert new_york.is_open(utc(2026, 3, 8, 6, 59, 59))  # 01:59:59 EST
    assert not new_york.is_open(utc(2026, 3, 8, 7, 0))  # 03:00 EDT: 02:00-03:00 never came
    assert new_york.local_time(utc(2026, 3, 8, 7, 0)).isoformat() == "2026-03-08T03:00:00-04:00"
    # 2026-11-01: 01:30 comes once on EDT and again an hour later on EST.
    assert new_york.is_open(utc(2026, 11, 1, 5, 30))
    assert new_york.is_open(utc(2026, 11, 1, 6, 30))
    assert not new_york.is_open(utc(2026, 11, 1, 8, 0))  # 03:00 EST


KIRITIMATI = """
timezone: Pacific/Kiritimati
weekly:
  mon: ["09:00-17:00"]
"""


def test_a_zone_far_from_utc_uses_its_own_date_for_the_weekday_and_holidays() -> None:
    monday_9am = utc(2026, 1, 4, 19, 0)  # Sunday in UTC, Monday 09:00 at UTC+14
    assert schedule(KIRITIMATI).is_open(monday_9am)
    assert not schedule(KIRITIMATI).is_open(utc(2026, 1, 5, 19, 0))  # Tuesday there
    assert not schedule(KIRITIMATI + 'holidays: ["2026-01-05"]').is_open(monday_9am)
    assert schedule(KIRITIMATI + 'holidays: ["2026-01-04"]').is_open(monday_9am)


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule().is_open(datetime(2026, 1, 5, 9, 0))


def test_intervals_that_touch_are_accepted_and_kept_in_order() -> None:
    hours = schedule(NEW_YORK).weekly["sun"]
    assert [str(interval) for interval in hours] == ["01:00-02:00", "02:00-03:00", "09:00-17:00"]
    assert schedule().model_dump(mode="json")["weekly"]["mon"] == ["09:00-12:30", "13:30-18:00"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "timezone: Europe/Pariss\nweekly: {}",
            "timezone: unknown time zone 'Europe/Pariss'; use an IANA name such as Europe/Paris",
            id="unknown-zone",
        ),
        pytest.param(
            "timezone: localtime\nweekly: {}",
            "timezone: unknown time zone 'localtime'; use an IANA name such as Europe/Paris",
            id="server-zone",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {mon: ['9-17']}",
            "weekly.mon.0: expected an interval \"HH:MM-HH:MM\", got '9-17'",
            id="interval-text",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {mon: ['09:00-12:00', '13:00-24:30']}",
            "weekly.mon.1: '13:00-24:30': 24:30 is not a time of day",
            id="time-of-day",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {fri: ['22:00-02:00']}",
            "weekly.fri.0: '22:00-02:00': the start must be before the end "
            "(an interval may not cross midnight: write two)",
            id="crosses-midnight",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {fri: ['09:00-09:00']}",
            "weekly.fri.0: '09:00-09:00': the start must be before the end",
            id="empty-interval",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {tue: ['13:00-18:00', '09:00-13:30']}",
            "weekly.tue: '09:00-13:30' overlaps '13:00-18:00'",
            id="overlap",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {monday: []}",
            "weekly.monday: 'monday' is not allowed: did you mean 'mon'?",
            id="weekday",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {}\nholidays: ['2026-02-30']",
            "holidays.0: '2026-02-30' is not a date: day is out of range for month",
            id="holiday-date",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {}\nholidays: [20261225]",
            "holidays.0: expected a date YYYY-MM-DD, got 20261225",
            id="holiday-number",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {}\nexceptions: {'2026-13-01': ['09:00-12:00']}",
            "exceptions.2026-13-01: '2026-13-01' is not a date: month must be in 1..12",
            id="exception-date",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {}\nexceptions: {'2026-12-24': ['12:00-11:00']}",
            "exceptions.2026-12-24.0: '12:00-11:00': the start must be before the end",
            id="exception-interval",
        ),
        pytest.param(
            "timezone: UTC\nweekly: {}\nholidays: [2026-12-24]\nexceptions: {2026-12-24: []}",
            "2026-12-24 is both a holiday and an exception; keep one",
            id="holiday-and-exception",
        ),
        pytest.param("timezone: UTC", "weekly: missing: it is required", id="no-weekly"),
    ],
)
def test_a_broken_schedule_is_refused_naming_the_field(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found[0]


# The step, run on its own: the flow that holds it binds its schedule when the flow loads.


def hours_step(text: str = SUPPORT) -> HoursStep:
    flow = Flow.model_validate({
        "trigger": {"channels": ["voice"]},
        "fallback_queue": "standard",
        "schedules": {"support": yaml.safe_load(text)},
        "steps": {
            "check": {"kind": "hours", "schedule": "support", "open": "to_day_team",
                      "closed": "after_hours"},
            "to_day_team": {"kind": "end"},
            "after_hours": {"kind": "end"},
        },
    })
    step = flow.steps["check"]
    assert isinstance(step, HoursStep)
    return step


def run_at(at: datetime, coroutine: Any) -> tuple[Any, Run]:
    async def go() -> tuple[Any, Run]:
        async with AiohttpClient() as http:
            the_run = Run(
                contact=Contact("+15551234567", "+15551234567", "voice"),
                params={},
                settings={},
                http=http,
                deadline=asyncio.get_running_loop().time() + 3,
                clock=lambda: at,
            )
            the_run.current_step = "check"
            return await coroutine(the_run), the_run

    return asyncio.run(go())


def test_the_step_takes_open_or_closed_by_the_runs_clock_and_records_the_local_time() -> None:
    step = hours_step()
    went, run = run_at(utc(2026, 1, 5, 8, 0), step.run)
    assert went == "to_day_team"
    assert run.steps["check"] == {"open": True, "local_time": "2026-01-05T09:00:00+01:00"}
    went, run = run_at(utc(2026, 12, 25, 11, 0, 0, 123456), step.run)
    assert went == "after_hours"
    assert run.steps["check"] == {"open": False, "local_time": "2026-12-25T12:00:00+01:00"}


def test_the_step_refuses_to_guess_when_no_schedule_was_bound() -> None:
    step = HoursStep.model_validate(
        {"kind": "hours", "schedule": "support", "open": "a", "closed": "b"}
    )
    with pytest.raises(LookupError, match="schedule 'support' was never bound"):
        run_at(utc(2026, 1, 5, 8, 0), step.run)


# In a flow file.

FLOW = """
trigger: {channels: [voice, messaging]}
fallback_queue: standard
schedules:
  support: {timezone: Europe/Paris, weekly: {mon: [%s]}}
steps:
  check: {kind: hours, schedule: %s, open: to_day_team, closed: after_hours}
  to_day_team: {kind: route, queue: gold}
  after_hours: {kind: route, queue: standard}
"""


def flow_file(tmp_path: Path, hours: str = "'09:00-18:00'", name: str = "support") -> Path:
    path = tmp_path / "hours.yaml"
    path.write_text(FLOW % (hours, name))
    return path


def test_a_flow_routes_by_its_schedule(tmp_path: Path) -> None:
    flow = load_flow_file(flow_file(tmp_path))

    def outcome(at: datetime) -> Outcome:
        return run_at(at, lambda run: run_flow(flow, run))[0]

    assert outcome(utc(2026, 1, 5, 8, 0)).actions[-1].queue == "gold"  # Monday 09:00 in Paris
    closed = outcome(utc(2026, 1, 5, 17, 0))
    assert closed.actions[-1].queue == "standard" and closed.fallback_reason is None


def test_a_flow_naming_an_undefined_schedule_is_refused(tmp_path: Path) -> None:
    path = flow_file(tmp_path, name="sales")
    with pytest.raises(FlowLoadError) as error:
        load_flow_file(path)
    assert error.value.problems == [
        f"{path}: steps.check.schedule: 'sales' is not one of the flow's schedules: the "
        "schedules are support"
    ]


def test_a_broken_schedule_in_a_flow_file_names_the_schedule_and_the_field(tmp_path: Path) -> None:
    path = flow_file(tmp_path, hours="'18:00-09:00'")
    with pytest.raises(FlowLoadError) as error:
        load_flow_file(path)
    assert error.value.problems == [
        f"{path}: schedules.support.weekly.mon.0: '18:00-09:00': the start must be before the end "
        "(an interval may not cross midnight: write two)"
    ]
