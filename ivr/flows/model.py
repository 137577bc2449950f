"""A flow: its trigger, its fallback queue and its graph of steps, validated as one model."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

import ivr.flows.steps  # noqa: F401  (registers every step kind)
from ivr.flows.step import STEP_KINDS, Channel, Step, StepId
from ivr.queues import QueueName

AnyStep = Annotated[Union[tuple(STEP_KINDS.values())], Field(discriminator="kind")]  # noqa: UP007
PhoneNumber = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]

MAX_STEPS = 200


class Trigger(BaseModel):
    """Which webhooks start the flow: the channels, and the `To` numbers (none: any number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[Channel, ...] = Field(min_length=1)
    numbers: tuple[PhoneNumber, ...] = ()
    default: bool = Field(
        default=False, description="Serve numbers that no other flow of the channel names."
    )


class Flow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", description="Set from the file name when the file has none.")
    description: str = ""
    trigger: Trigger
    fallback_queue: QueueName = Field(
        description="Where a contact goes when the flow cannot finish (error, deadline)."
    )
    start: StepId | None = Field(default=None, description="First step; default the first listed.")
    steps: dict[StepId, AnyStep] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _graph_is_sound(self) -> Flow:
        if self.start is not None and self.start not in self.steps:
            raise ValueError(f"start: no step named {self.start!r}")
        for step_id, step in self.steps.items():
            for target in step.exits():
                if target not in self.steps:
                    raise ValueError(f"step {step_id!r}: goes to {target!r}, which is not a step")
        reachable = self._reachable()
        unreachable = [step_id for step_id in self.steps if step_id not in reachable]
        if unreachable:
            raise ValueError(f"step {unreachable[0]!r}: no step leads to it (unreachable)")
        return self

    def _reachable(self) -> set[str]:
        seen: set[str] = set()
        pending = [self.start_step]
        while pending:
            step_id = pending.pop()
            if step_id not in seen:
                seen.add(step_id)
                pending.extend(self.steps[step_id].exits())
        return seen

    @property
    def start_step(self) -> str:
        return self.start or next(iter(self.steps))

    def routed_queues(self) -> set[str]:
        """Every queue the flow may route to, its fallback included."""
        queues = {self.fallback_queue}
        queues.update(q for step in self.steps.values() if (q := getattr(step, "queue", None)))
        return queues

    def step(self, step_id: str) -> Step:
        return self.steps[step_id]

    @classmethod
    def from_data(cls, data: Any, name: str) -> Flow:
        if isinstance(data, dict) and not data.get("name"):
            data = {**data, "name": name}
        return cls.model_validate(data)
