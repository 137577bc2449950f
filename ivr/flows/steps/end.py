"""`end`: finish without a route (hang up a call; say nothing more on messaging).

    goodbye:
      kind: end
"""

from __future__ import annotations

from typing import Literal

from ivr.flows.actions import Hangup
from ivr.flows.step import Run, Step, register_step


@register_step
class EndStep(Step):
    kind: Literal["end"]

    shape = "exit"

    async def run(self, run: Run) -> str | None:
        run.emit(Hangup())
        return None
