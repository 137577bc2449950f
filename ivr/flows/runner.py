"""Running a flow until it routes, ends or waits for an answer, within the routing deadline,
always with an outcome."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.model import Flow
from ivr.flows.step import WAIT, Run, StepResult, default_handoff_note
from ivr.metrics import (
    FALLBACK_DEADLINE,
    FALLBACK_ERROR,
    count_fallback,
    count_flow_error,
)

log = logging.getLogger("ivr.flows.runner")

# Loops without a waiting step are refused at load; this guards against the unforeseen.
MAX_STEPS_PER_RUN = 100


class FlowRunError(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    actions: list[Action]
    trace: list[str]  # step ids, in the order they ran
    fallback_reason: str | None  # why the flow's fallback queue was used, if it was
    waiting_at: str | None = None  # the step waiting for the contact's answer, if any


async def run_flow(
    flow: Flow,
    run: Run,
    resume_at: str | None = None,
    answer: str | None = None,
    start_at: str | None = None,
) -> Outcome:
    """Run `flow` from its start (or from `start_at`), or resume it at the waiting step
    `resume_at` with the contact's `answer`, until it routes, ends or asks again. Any failure, or
    reaching the deadline, routes the contact to the flow's fallback queue, after whatever the
    flow had already said."""
    reason = None
    waiting_at = None
    try:
        async with asyncio.timeout_at(run.deadline):
            waiting_at = await _advance(flow, run, resume_at, answer, start_at)
    except TimeoutError:
        reason = "deadline"
        count_fallback(run.contact.channel, flow.name, FALLBACK_DEADLINE)
    except Exception as exc:  # a flow must never leave a contact without a route
        reason = f"{type(exc).__name__} in step {run.current_step!r}"
        log.exception(
            "flow %s failed in step %r; routing to its fallback queue", flow.name, run.current_step
        )
        count_flow_error(flow.name, run.current_step, flow.steps)
        count_fallback(run.contact.channel, flow.name, FALLBACK_ERROR)
    if reason is not None:
        waiting_at = None
        run.emit(RouteToQueue(flow.fallback_queue, _fallback_note(run)))
    return Outcome(run.actions, run.trace, reason, waiting_at)


async def _advance(flow: Flow, run: Run, resume_at: str | None, answer: str | None,
                   start_at: str | None) -> str | None:
    if resume_at is None:
        return await _walk(flow, run, start_at or flow.start_step)
    run.current_step = resume_at
    run.trace.append(resume_at)
    result = await flow.step(resume_at).resume(run, answer)
    return await _walk(flow, run, result)


async def _walk(flow: Flow, run: Run, result: StepResult) -> str | None:
    """Run steps from `result` on; return the id of the step left waiting, if one is."""
    while result is not None:
        if result is WAIT:
            return run.current_step
        if len(run.trace) >= MAX_STEPS_PER_RUN:
            raise FlowRunError(f"more than {MAX_STEPS_PER_RUN} steps without waiting")
        run.current_step = result  # type: ignore[assignment]
        run.trace.append(run.current_step)
        result = await flow.step(run.current_step).run(run)
    return None


def _fallback_note(run: Run) -> str:
    try:
        return default_handoff_note(run.variables)
    except Exception:
        return run.contact.number
