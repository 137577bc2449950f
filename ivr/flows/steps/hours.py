"""Goes to `open` or `closed` by one of the flow's `schedules`, at the current time on the schedule's
wall clock.

```yaml
schedules:
  support:
    timezone: Europe/Paris             # an IANA name
    weekly:                            # days not listed are closed
      mon: ["09:00-12:30", "13:30-18:00"]
      tue: ["09:00-18:00"]
      sat: ["10:00-14:00"]
    holidays: ["2026-12-25"]           # closed all day
    exceptions:                        # dates with their own hours ([] closes the day)
      "2026-12-24": ["09:00-13:00"]
steps:
  check:
    kind: hours
    schedule: support
    open: to_day_team
    closed: after_hours
```

An interval includes its start and excludes its end; `24:00` ends a day, and an interval that
would cross midnight is written as two. Intervals of a day may not overlap; a date may not be both
a holiday and an exception. `steps.<id>.open` is true or false and `steps.<id>.local_time` the
time checked (ISO 8601 with the zone's offset, daylight saving included).
"""

from __future__ import annotations

from typing import Literal

from pydantic import PrivateAttr

from ivr.flows.schedules import Schedule, ScheduleName
from ivr.flows.step import FlowParts, Run, Step, StepId, register_step
from ivr.validation import Problem, unknown


@register_step
class HoursStep(Step):
    kind: Literal["hours"]
    schedule: ScheduleName  # one of the flow's, as ivr/flows/schedules.py reads them
    open: StepId
    closed: StepId

    reference_order = 90
    exit_fields = ("open", "closed")
    records = ("open", "local_time")
    shape = "decision"

    # The step names its schedule; the flow, which holds the schedules, binds it at load time.
    _bound: Schedule | None = PrivateAttr(default=None)

    def graph_detail(self) -> str:
        return f" {self.schedule}"

    def bind(self, flow: FlowParts) -> list[Problem]:
        if not flow.schedules:
            return [Problem(("schedule",), f"{self.schedule!r} is not defined: add it under the "
                            "flow's `schedules`")]
        if self.schedule not in flow.schedules:
            return [Problem(("schedule",), unknown("one of the flow's schedules", self.schedule,
                                                   flow.schedules, "schedules"))]
        self._bound = flow.schedules[self.schedule]
        return []

    async def run(self, run: Run) -> str | None:
        if self._bound is None:
            raise LookupError(f"schedule {self.schedule!r} was never bound to this step")
        local = self._bound.local_time(run.clock())
        is_open = self._bound.is_open(local)
        run.steps[run.current_step] = {
            "open": is_open,
            "local_time": local.isoformat(timespec="seconds"),
        }
        return self.open if is_open else self.closed
