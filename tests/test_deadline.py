"""ivr.deadline: asyncio.timeout's verdicts, on both event loops the server may run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from ivr.deadline import until, within

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    def run_on_loop(main: Awaitable[Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(main)  # type: ignore[arg-type]
    return run_on_loop


def test_an_operation_done_in_time_gives_its_result_and_leaves_no_timer(run: Any) -> None:
    async def main() -> tuple[str, int]:
        result = await within(0.05, asyncio.sleep(0.01, "done"))
        # The task is not cancelled later by a timer left behind.
        await asyncio.sleep(0.15)
        return result, asyncio.current_task().cancelling()  # type: ignore[union-attr]

    assert run(main()) == ("done", 0)


def test_an_operation_past_its_deadline_raises_timeout_error_and_is_cancelled(run: Any) -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await until(started + 0.05, slow())
        task = asyncio.current_task()
        assert task is not None
        # The cancellation was ours: the task is not left cancelling, and goes on.
        await asyncio.sleep(0)
        return loop.time() - started, task.cancelling()

    took, cancelling = run(main())
    assert 0.04 <= took < 2
    assert cancelling == 0
    assert cancelled == [True]


def test_a_cancellation_from_outside_stays_a_cancellation(run: Any) -> None:
    async def main() -> None:
        async def waiting() -> None:
            await within(10, asyncio.sleep(10))

        task = asyncio.ensure_future(waiting())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_cancelled_from_outside_as_time_runs_out_is_still_cancelled(run: Any) -> None:
    """Both at once: whoever cancelled the task from outside must see it end cancelled, as with
    asyncio.timeout, rather than get a TimeoutError it would take for the operation's."""

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def waiting() -> None:
            await until(loop.time() + 0.02, asyncio.sleep(10))

        task = asyncio.ensure_future(waiting())
        await asyncio.sleep(0)
        loop.call_at(loop.time() + 0.02, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    run(main())


def test_an_error_of_the_operation_passes_through(run: Any) -> None:
    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad answer")

    async def main() -> None:
        with pytest.raises(ValueError, match="bad answer"):
            await within(5, failing())

    run(main())
