"""`goto`: go to another step (a loop must pass through a step that waits, such as `ask`).

    again:
      kind: goto
      next: menu
"""

from __future__ import annotations

from typing import Literal

from ivr.flows.step import Run, Step, StepId, StepResult, register_step


@register_step
class GotoStep(Step):
    kind: Literal["goto"]
    next: StepId

    exit_fields = ("next",)

    async def run(self, run: Run) -> StepResult:
        return self.next
