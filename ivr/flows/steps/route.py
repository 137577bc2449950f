"""`route`: hand the contact to a queue. Voice dials the queue's SIP URI; messaging forwards
`message` to the queue's messaging target.

    to_gold:
      kind: route
      queue: gold
      message: "{{ contact.number }} (gold): {{ params.Body }}"   # optional
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
