"""A webhook's session (ivr.redis.sessions), best effort: without Redis a contact is routed all
the same, as a new one."""

from __future__ import annotations

import logging

from ivr.channels.inbound import Webhook
from ivr.flows.model import Flow
from ivr.session import Session
from ivr.services import Services, best_effort

log = logging.getLogger("ivr.webhook")


async def load_session(services: Services, hook: Webhook) -> Session | None:
    """The contact's session in progress, if it has one that a loaded flow can continue."""
    session = await best_effort(services.sessions.load(hook.session_key), None, "session load")
    if session is not None and session.flow not in services.flows.flows:
        # Its flow was removed or renamed by a deploy: its steps mean nothing any more.
        log.info("%s %s: session of a flow no longer loaded; starting over", hook.channel,
                 hook.sid)
        return None
    return session


async def end_session(services: Services, hook: Webhook) -> None:
    await best_effort(services.sessions.end(hook.session_key), None, "session end")


def session_flow(services: Services, session: Session | None, hook: Webhook) -> Flow | None:
    """The flow a session runs, or for a new one the flow bound to the channel and number."""
    if session is not None and session.flow in services.flows.flows:
        return services.flows.flows[session.flow]
    return services.flows.select(hook.channel, hook.to_number)
