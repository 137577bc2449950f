"""Finishes without a route: hangs up a call, ends a conversation without a further message.

```yaml
goodbye:
  kind: end
```
"""

from __future__ import annotations

from typing import Literal

from ivr.flows.actions import Hangup
from ivr.flows.step import Run, Step, register_step


@register_step
class EndStep(Step):
    kind: Literal["end"]

    reference_order = 50
    shape = "exit"

    async def run(self, run: Run) -> str | None:
        run.emit(Hangup())
        return None
