"""Hands the contact to a queue (defined in `IVR_SIP_CONFIG`, then live in the admin API).

```yaml
to_gold:
  kind: route
  queue: gold
  message: "{{ contact.number }} (gold): {{ params.Body }}"   # optional
```

Voice dials the queue's `sip_uri` (then its `fallback_sip_uris` and `overflow` queues, then the
flow's `unanswered` step). Messaging acknowledges the customer if the flow said nothing in the same
reply, and forwards `message` (default `{{ contact.number }}: {{ params.Body }}`) to the queue's
`message_to` (when the queue has one and the message is not empty). A route to a queue that an
admin has since removed goes to the flow's `fallback_queue`.
"""

from __future__ import annotations

from typing import Any, Literal

from ivr.flows.actions import RouteToQueue
from ivr.flows.step import DEFAULT_HANDOFF_NOTE, Run, Step, register_step
from ivr.flows.templates import Template
from ivr.queues import QueueName


@register_step
class RouteStep(Step):
    kind: Literal["route"]
    queue: QueueName
    message: Template = DEFAULT_HANDOFF_NOTE

    reference_order = 40
    queue_fields = ("queue",)
    shape = "exit"
    hands_off = True

    def graph_detail(self) -> str:
        return f" to {self.queue}"

    def handoff_note(self, variables: dict[str, Any]) -> str:
        return self.message.render(variables).strip()

    async def run(self, run: Run) -> str | None:
        # Only a messaging hand-off carries the note: a call needs none.
        note = self.handoff_note(run.variables) if run.contact.channel == "messaging" else ""
        run.emit(RouteToQueue(self.queue, note))
        return None
