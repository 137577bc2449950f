"""Goes to another step, typically back to a question.

```yaml
again:
  kind: goto
  next: menu
```

A loop of steps none of which waits (`ask`) is a load error: it would spin forever.
"""

from __future__ import annotations

from typing import Literal

from ivr.flows.step import Run, Step, StepId, StepResult, register_step


@register_step
class GotoStep(Step):
    kind: Literal["goto"]
    next: StepId

    reference_order = 80
    exit_fields = ("next",)

    async def run(self, run: Run) -> StepResult:
        return self.next
