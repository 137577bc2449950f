"""Retries: Twilio sends a webhook again, with the same I-Twilio-Idempotency-Token, when it
did not get the answer in time. The retry gets the answer first given, so that nothing is
counted or forwarded twice."""

from __future__ import annotations

from collections.abc import Awaitable

from ivr.channels.inbound import Webhook
from ivr.services import Services, best_effort

IDEMPOTENCY_HEADER = "i-twilio-idempotency-token"


def idempotency_token(headers: dict[str, str]) -> str:
    """The webhook's token ("" when Twilio sent none), bounded for a Redis key."""
    return headers.get(IDEMPOTENCY_HEADER, "")[:200]


def earlier_answer(services: Services, token: str) -> Awaitable[str | None]:
    """The TwiML answered to the webhook this one retries, if it is one (`token` is not "")."""
    return best_effort(services.conversations.replay(token), None, "retry lookup")


async def keep_answer(services: Services, hook: Webhook, token: str, twiml: str) -> None:
    """Keep the answer for a retry of this webhook. A message's is written before the lock is
    released, since a retry may be waiting on the lock. A call's retry comes seconds later and
    its lookup queues behind this write on the same connection, so the answer does not wait."""
    if not token:
        return
    command = services.conversations.record_reply_command(token, twiml)
    if hook.channel == "messaging":
        await services.conversations.writes.execute(command)
    else:
        services.conversations.writes.send(command)
