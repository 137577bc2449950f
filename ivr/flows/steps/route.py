"""`route`: hand the contact to a queue. Voice dials the queue's SIP URI; messaging forwards
`message` to the queue's messaging target.

    to_gold:
      kind: route
      queue: gold
      message: "{{ contact.number }} (gold): {{ params.Body }}"   # optional
"""

from __future__ import annotations

from typing import Literal

from ivr.flows.actions import RouteToQueue
from ivr.flows.step import Run, Step, register_step
from ivr.flows.templates import Template
from ivr.queues import QueueName

DEFAULT_MESSAGE = Template("{{ contact.number }}: {{ params.Body }}")


@register_step
class RouteStep(Step):
    kind: Literal["route"]
    queue: QueueName
    message: Template = DEFAULT_MESSAGE

    async def run(self, run: Run) -> str | None:
        # Only a messaging hand-off carries the note: a call needs none.
        note = (self.message.render(run.variables).strip()
                if run.contact.channel == "messaging" else "")
        run.emit(RouteToQueue(self.queue, note))
        return None
