"""The routing deadline of a run (asyncio.timeout_at in ivr.flows.runner), on both event loops
the server may run: past it the contact is routed to the fallback queue and the step cancelled;
a cancellation from outside stays one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

import pytest
import uvloop

from ivr.flows.actions import RouteToQueue, Say
from ivr.flows.model import Flow
from ivr.flows.runner import Outcome, run_flow
from ivr.flows.step import Contact, Run, Step
from tests.test_runner import flow

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    def run_on_loop(main: Awaitable[Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(main)  # type: ignore[arg-type]
    return run_on_loop


class WaitingStep(Step):
    """Waits `seconds`, then goes on to `next`; records whether it was cancelled."""

    kind: Literal["waiting"] = "waiting"
    seconds: float
    next: str
    cancelled: ClassVar[list[bool]] = []

    async def run(self, run: Run) -> str | None:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled.append(True)
            raise
        return self.next


def waiting_flow(seconds: float) -> Flow:
    """Says something, waits `seconds` in a step, then routes to gold."""
    base = flow("""
    greet: {kind: say, text: One moment, next: to_gold}
    to_gold: {kind: route, queue: gold}
    """)
    steps = {"greet": base.steps["greet"].model_copy(update={"next": "wait"}),
             "wait": WaitingStep(seconds=seconds, next="to_gold"),
             "to_gold": base.steps["to_gold"]}
    return base.model_copy(update={"steps": steps})


async def run_within(flow_: Flow, seconds: float) -> Outcome:
    loop = asyncio.get_running_loop()
    the_run = Run(contact=Contact("+15551234567", "+15551234567", "voice"), params={},
                  settings={}, http=None, deadline=loop.time() + seconds)  # type: ignore[arg-type]
    return await run_flow(flow_, the_run)


@pytest.fixture(autouse=True)
def no_cancellations_yet() -> None:
    WaitingStep.cancelled.clear()


def test_a_run_done_in_time_routes_as_the_flow_says_and_leaves_no_timer(run: Any) -> None:
    async def main() -> tuple[Outcome, int]:
        outcome = await run_within(waiting_flow(0.01), 0.05)
        # The task is not cancelled later by a timer left behind.
        await asyncio.sleep(0.15)
        return outcome, asyncio.current_task().cancelling()  # type: ignore[union-attr]

    outcome, cancelling = run(main())
    assert outcome.actions == [Say("One moment"), RouteToQueue("gold", "")]
    assert (outcome.fallback_reason, cancelling) == (None, 0)


def test_a_step_past_the_deadline_is_cancelled_and_the_contact_routed_to_the_fallback(
        run: Any) -> None:
    async def main() -> tuple[Outcome, float, int]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await run_within(waiting_flow(10), 0.05)
        task = asyncio.current_task()
        assert task is not None
        # The cancellation was the deadline's: the task is not left cancelling, and goes on.
        await asyncio.sleep(0)
        return outcome, loop.time() - started, task.cancelling()

    outcome, took, cancelling = run(main())
    assert 0.04 <= took < 2
    assert outcome.fallback_reason == "deadline"
    assert outcome.actions[0] == Say("One moment") and len(outcome.actions) == 2
    assert outcome.actions[1].queue == "standard"  # type: ignore[attr-defined]
    assert cancelling == 0
    assert WaitingStep.cancelled == [True]


def test_a_cancellation_from_outside_stays_a_cancellation_and_routes_nowhere(run: Any) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(run_within(waiting_flow(10), 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert WaitingStep.cancelled == [True]


def test_cancelled_from_outside_as_time_runs_out_is_still_cancelled(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both at once: whoever cancelled the run from outside (a shutdown) must see it end
    cancelled, rather than get an outcome routed to the fallback for the deadline."""
    tasks: list[asyncio.Task[Outcome]] = []
    on_timeout = asyncio.Timeout._on_timeout  # noqa: SLF001

    def and_from_outside(timeout: asyncio.Timeout) -> None:
        # In the deadline's own callback, so both land in one loop iteration on every loop: two
        # timers for one instant could fire an iteration apart, and did on a loaded machine
        # (the run then ended routed before the outside cancellation came).
        on_timeout(timeout)
        tasks[0].cancel()

    monkeypatch.setattr(asyncio.Timeout, "_on_timeout", and_from_outside)

    async def main() -> None:
        task = asyncio.ensure_future(run_within(waiting_flow(10), 0.02))
        tasks.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    run(main())
