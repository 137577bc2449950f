"""A webhook's session (ivr.redis.sessions), best effort: without Redis a contact is routed all
the same, as a new one; and the flows it runs on: the version it started on (ivr.flow_versions),
whatever was published since."""

from __future__ import annotations

import logging

from ivr.channels.inbound import Webhook
from ivr.flow_versions import PinnedVersionMissing
from ivr.flows.loader import FlowSet
from ivr.flows.model import Flow
from ivr.services import Services, best_effort
from ivr.session import Session

log = logging.getLogger("ivr.webhook")


async def load_session(services: Services, hook: Webhook) -> Session | None:
    """The contact's session in progress, if it has one that can be continued."""
    session = await best_effort(services.sessions.load(hook.session_key), None, "session load")
    if session is not None and session.flow_version is None \
            and session.flow not in services.flows.flows:
        # From before flow versions, and its flow is gone: its steps mean nothing any more.
        log.info("%s %s: session of a flow no longer loaded; starting over", hook.channel,
                 hook.sid)
        return None
    return session


async def end_session(services: Services, hook: Webhook) -> None:
    await services.conversations.writes.execute(services.sessions.end_command(hook.session_key))


async def session_flows(services: Services, session: Session | None) -> FlowSet:
    """The flows a session runs on: the version it started on, or for a new session (or one
    from before versions) the live version. Raises PinnedVersionMissing."""
    live = services.flows
    if session is None or session.flow_version is None or session.flow_version == live.version:
        return live
    try:
        return await services.live_flows.pinned(session.flow_version)
    except PinnedVersionMissing as exc:
        exc.flow = session.flow
        raise


def flow_for(flows: FlowSet, session: Session | None, hook: Webhook) -> Flow | None:
    """The flow a session runs, or for a new one the flow bound to the channel and number."""
    if session is not None and session.flow in flows.flows:
        return flows.flows[session.flow]
    return flows.select(hook.channel, hook.to_number)


async def pinned_or_live(services: Services, session: Session | None, hook: Webhook
                         ) -> FlowSet:
    """`session_flows`, or the live version when the session's cannot be had: for what needs no
    step the session waits at (a dial's `unanswered` step, a hand-off's note), where the live
    version's flow of the same name does as well as a fallback would, and better."""
    try:
        return await session_flows(services, session)
    except PinnedVersionMissing as exc:
        log.info("%s %s: %s; using the live version's flow", hook.channel, hook.sid, exc)
        return services.flows
