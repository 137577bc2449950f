"""Redis commands of concurrent webhooks, sent together: every command issued during one turn of
the event loop goes out in one pipeline, one round trip, and each caller gets its own reply.

A redis-py command costs far more CPU in its client layers (connection pool, retry, parsing
set-up) than on the wire; under load, 64 calls in flight each making their own round trips
spent a fifth of the server's CPU there. Batched, that cost is paid once per turn of the loop.
Replies keep their order, so the commands a caller issues one after another without awaiting
reach Redis together and in that order (but not atomically: this is not MULTI).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as redis

log = logging.getLogger("ivr.autopipeline")

# A batch that takes longer fails its callers with TimeoutError: state makes a call better,
# never possible, and a hung Redis must not hold calls.
BATCH_TIMEOUT = 1.0


Command = tuple[Any, ...]  # as `Redis.execute_command` takes it: ("SET", key, value, "EX", 60)


class AutoPipeline:
    def __init__(self, client: redis.Redis, timeout: float = BATCH_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout
        self._pending: list[tuple[tuple[Command, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0  # round trips made (tests, and anyone profiling)

    async def execute(self, *commands: Command) -> list[Any]:
        """Send `commands` with this turn's batch; their replies, in order. Raises the first
        error: an error reply, or RedisError, OSError or TimeoutError for the whole batch,
        which never takes longer than `timeout`."""
        replies = await self._enqueue(commands)
        if isinstance(replies, Exception):
            raise replies
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies  # type: ignore[no-any-return]

    def send(self, *commands: Command, what: str) -> None:
        """Queue `commands` without waiting for their replies (a cache write, say); a failure
        is logged as `what` skipped."""
        self._enqueue(commands).add_done_callback(lambda done: _log_failure(done, what))

    def _enqueue(self, commands: tuple[Command, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((commands, future))
        return future

    def _flush(self) -> None:
        if not self._pending:  # close() sent them already
            return
        batch, self._pending = self._pending, []
        self.batches += 1
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[tuple[Command, ...], asyncio.Future[Any]]]
                    ) -> None:
        # Futures get errors as results: a caller that gave up leaves nothing unretrieved.
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    for commands, _ in batch:
                        for command in commands:
                            pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection, a timeout: every caller of the batch learns
            for _, future in batch:
                if not future.done():
                    future.set_result(exc)
            return
        except asyncio.CancelledError:  # the server is stopping
            for _, future in batch:
                future.cancel()
            raise
        start = 0
        for commands, future in batch:
            if not future.done():  # else its caller gave up waiting
                future.set_result(replies[start:start + len(commands)])
            start += len(commands)

    async def close(self) -> None:
        """Wait for the batches on their way (a last contact-memory write, say)."""
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


def _log_failure(done: asyncio.Future[Any], what: str) -> None:
    if done.cancelled():
        return
    replies = done.result()
    errors = [replies] if isinstance(replies, Exception) else [
        reply for reply in replies if isinstance(reply, Exception)]
    if errors:
        log.warning("%s skipped: %s", what, type(errors[0]).__name__)
