"""Messaging's sticky hand-off: a conversation routed to a queue that takes messages stays with
it, and each later message of the contact is forwarded there, with no new lookup, until the
session expires. One handed off because a lookup failed (`Session.reroute_from`) is not forwarded
here: each message decides its route again (ivr.channels.webhook)."""

from __future__ import annotations

from ivr.channels.answer import Answer
from ivr.channels.inbound import Webhook
from ivr.channels.messaging import render_messaging
from ivr.channels.sessions import flow_for, pinned_or_live
from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.step import default_handoff_note
from ivr.services import Services
from ivr.session import Session
from ivr.turn import new_run


async def forward_to_queue(services: Services, hook: Webhook, session: Session
                           ) -> Answer:
    """A contact already handed over (`session.routed_to`) keeps talking to the same queue: no
    new lookup."""
    queue_name = session.routed_to or ""
    flow = flow_for(await pinned_or_live(services, session, hook), session, hook)
    step = flow.steps.get(session.route_step or "") if flow else None
    run = new_run(session, hook.contact, hook.params, services.surroundings)
    note = (step.handoff_note if step else default_handoff_note)(run.variables)
    actions: list[Action] = [RouteToQueue(queue_name, note)]
    queue = services.store.queue(queue_name)
    queues = {queue_name: queue} if queue is not None else {}
    hook.trace.handed_over(session.flow, queue_name)
    # Already acknowledged when handed over: forwarding alone, without a new acknowledgement.
    twiml = render_messaging(actions, queues, acknowledge=False, inbound=hook.params)
    if flow is not None:  # each message keeps the hand-off alive for another expire_after
        await services.conversations.writes.execute(
            services.sessions.save_command(hook.session_key, session, flow.expire_after))
    if queue is None:
        done = f"not forwarded: queue {queue_name} no longer exists (apology sent)"
    elif queue.message_to is None:
        done = f"not forwarded: queue {queue_name} has no message_to"
    else:
        done = f"forwarded to queue {queue_name}"
    return twiml, f"{done} (conversation already handed off)"
