"""Running a flow until it routes or ends, within the routing deadline, always with an outcome."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.model import Flow
from ivr.flows.step import Run
from ivr.flows.steps.route import DEFAULT_MESSAGE

log = logging.getLogger("ivr.flows.runner")

# A flow without waits (ask comes later) that takes more steps than this is looping.
MAX_STEPS_PER_RUN = 100


class FlowRunError(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    actions: list[Action]
    trace: list[str]  # step ids, in the order they ran
    fallback_reason: str | None  # why the flow's fallback queue was used, if it was


async def run_flow(flow: Flow, run: Run) -> Outcome:
    """Run `flow` until it routes or ends. Any failure, or reaching the deadline, routes the contact
    to the flow's fallback queue, after whatever the flow had already said."""
    reason = None
    try:
        async with asyncio.timeout_at(run.deadline):
            await _walk(flow, run)
    except TimeoutError:
        reason = "deadline"
    except Exception as exc:  # a flow must never leave a contact without a route
        reason = f"{type(exc).__name__} in step {run.current_step!r}"
        log.exception(
            "flow %s failed in step %r; routing to its fallback queue", flow.name, run.current_step
        )
    if reason is not None:
        run.emit(RouteToQueue(flow.fallback_queue, _fallback_note(run)))
    return Outcome(run.actions, run.trace, reason)


async def _walk(flow: Flow, run: Run) -> None:
    step_id: str | None = flow.start_step
    while step_id is not None:
        if len(run.trace) >= MAX_STEPS_PER_RUN:
            raise FlowRunError(f"more than {MAX_STEPS_PER_RUN} steps without waiting")
        run.current_step = step_id
        run.trace.append(step_id)
        step_id = await flow.step(step_id).run(run)


def _fallback_note(run: Run) -> str:
    try:
        return DEFAULT_MESSAGE.render(run.variables).strip()
    except Exception:
        return run.contact.number
