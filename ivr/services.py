"""What webhooks share in one process: the flows, the stores, the clients and the settings they
read, built once in the app's lifespan (ivr.app)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import RedisError

from ivr.channels.answer import Answer
from ivr.channels.voice import CallbackUrls
from ivr.flow_versions import FlowChecks, LiveFlows
from ivr.flows.loader import FlowSet
from ivr.redis.call_traces import CallTraces
from ivr.redis.conversations import Conversations
from ivr.redis.fetch_cache_purges import FetchCachePurges
from ivr.redis.flow_store import FlowStore
from ivr.redis.queue_store import QueueStore
from ivr.redis.sessions import Sessions
from ivr.turn import Surroundings
from ivr.twilio_security import WebhookVerifier

log = logging.getLogger("ivr.webhook")
T = TypeVar("T")


@dataclass(frozen=True)
class HoldPolicy:
    after: float  # seconds before a caller hears the hold prompt
    prompt: str


@dataclass
class Services:
    """What webhooks share in one process, built once in the app's lifespan."""

    live_flows: LiveFlows  # the live version, and older ones sessions are pinned to
    flow_store: FlowStore  # every published version
    flow_checks: FlowChecks  # what a publish is checked against, besides the queues
    store: QueueStore
    sessions: Sessions
    conversations: Conversations
    cache_purges: FetchCachePurges  # the admin's; every process applies them
    traces: CallTraces
    verifier: WebhookVerifier
    urls: CallbackUrls
    # What every turn of a flow reads and uses: settings, secrets, the HTTP client, the fetch
    # cache and breakers, the decision deadline.
    surroundings: Surroundings
    hold: HoldPolicy
    max_body_bytes: int
    # Decisions still running after their caller was put on hold, by CallSid.
    held: dict[str, asyncio.Task[Answer]] = field(default_factory=dict)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def flows(self) -> FlowSet:
        """The live flows version, as this process serves it now."""
        return self.live_flows.current

    def background(self, operation: Awaitable[Any]) -> None:
        """Run `operation` after the answer is sent, keeping it alive until it is done."""
        task = asyncio.ensure_future(best_effort(operation, None, "background write"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for what this process still owes once it has answered
        its last webhook: the decisions of calls on hold (whose redirect may reach another
        process, as the process stops) and the writes after answers, the decisions' included."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while pending := [task for task in (*self.held.values(), *self._background)
                          if not task.done()]:
            left = deadline - loop.time()
            if left <= 0:
                log.warning("stopping with %d decisions or writes unfinished after %g s",
                            len(pending), timeout)
                return
            await asyncio.wait(pending, timeout=left)


async def best_effort(operation: Awaitable[T], default: T, what: str) -> T:
    """Session and contact state make a call better, never possible: without Redis, a call is
    routed all the same, from the configuration in memory. The operations go through the
    auto-pipeline, which bounds them (ivr.redis.autopipeline.BATCH_TIMEOUT)."""
    try:
        return await operation
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("%s skipped: store unavailable (%s)", what, type(exc).__name__)
        return default
