"""Hold while slow: a call whose decision (a slow lookup) takes longer than `hold_after` hears
the hold prompt, and Twilio's redirect after it (`?held=1`) takes the decision, from this
process or, through Redis, from the instance that made it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError

from ivr.channels.answer import Answer
from ivr.channels.fallback import fallback_answer
from ivr.channels.inbound import Webhook
from ivr.channels.reporting import report_decision
from ivr.channels.voice import render_hold
from ivr.metrics import FALLBACK_DEADLINE, FALLBACK_REDIS, FallbackReason
from ivr.redis.conversations import HELD_TTL
from ivr.services import Services

log = logging.getLogger("ivr.webhook")


def is_redirect_after_hold(hook: Webhook) -> bool:
    return hook.query.get("held") == "1"


async def decided_or_held(services: Services, hook: Webhook,
                          deciding: Coroutine[Any, Any, Answer]) -> Answer:
    """The decision if it is made within `hold_after`; else the hold prompt, the decision left
    running for the redirect that follows it."""
    decision = asyncio.ensure_future(deciding)
    # The standard library's timer; what it costs a call: bench/README.md, ivr/channels/hold.py.
    done, _ = await asyncio.wait((decision,), timeout=services.hold.after)
    if done:
        return decision.result()
    services.held[hook.sid] = decision
    decision.add_done_callback(lambda task: _keep_held_decision(services, hook, task))
    return (render_hold(services.hold.prompt, services.urls.held()),
            f"on hold after {services.hold.after:g} s while the decision finishes")


def _keep_held_decision(services: Services, hook: Webhook, task: asyncio.Task[Answer]) -> None:
    """Publish a held call's decision for whichever instance Twilio's redirect reaches, and
    record it here, where it was made: the webhook's own record was of the hold prompt."""
    # The redirect takes it within seconds; a call hung up on hold never comes for it.
    asyncio.get_running_loop().call_later(HELD_TTL.total_seconds(), _forget_held, services,
                                          hook.sid, task)
    if task.cancelled() or task.exception() is not None:
        return
    twiml, summary = task.result()
    services.background(services.conversations.hold_result(hook.sid, twiml))
    report_decision(services, hook.trace, f"decided after the hold prompt: {summary}",
                    time.time() - hook.trace.at)


def _forget_held(services: Services, sid: str, task: asyncio.Task[Answer]) -> None:
    if services.held.get(sid) is task:
        del services.held[sid]


async def held_decision(services: Services, hook: Webhook) -> Answer:
    """The redirect after the hold prompt: the decision, from this process or from Redis."""
    local = services.held.pop(hook.sid, None)
    cause: FallbackReason = FALLBACK_DEADLINE  # unless Redis could not be asked for it
    if local is not None:
        try:
            async with asyncio.timeout(services.surroundings.deadline + 1):
                twiml, summary = await asyncio.shield(local)
            return twiml, f"after hold: {summary}"
        except TimeoutError:
            pass
    else:
        try:
            published = await services.conversations.wait_for_hold_result(
                hook.sid, services.surroundings.deadline + 1)
        except (RedisError, OSError) as exc:
            log.warning("held decision unavailable: %s", type(exc).__name__)
            published, cause = None, FALLBACK_REDIS
        if published is not None:
            return published, "after hold: the decision made by another instance"
    return fallback_answer(services, hook, reason="held decision not found", cause=cause)
