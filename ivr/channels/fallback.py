"""The last resort of every failure in call handling: the flow's fallback queue, from the
configuration in memory, or an apology when there is none. A contact never hears silence or an
application error."""

from __future__ import annotations

import logging

from ivr.channels.answer import Answer
from ivr.channels.inbound import Webhook
from ivr.channels.messaging import render_messaging, render_messaging_apology
from ivr.channels.voice import render_voice, render_voice_apology
from ivr.flow_versions import PinnedVersionMissing
from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.model import Flow
from ivr.metrics import FallbackReason, count_fallback
from ivr.services import Services

log = logging.getLogger("ivr.webhook")
_told_missing: set[int] = set()  # the flows versions found missing, told once each


def fallback_answer(services: Services, hook: Webhook, flow: Flow | None = None,
                    reason: str = "internal error", *, cause: FallbackReason) -> Answer:
    """The TwiML routing to the flow's fallback queue, and a summary for the log; `reason` says
    why in words, for the trace and the log, and `cause` is how ivr_fallbacks_total counts it."""
    flow = flow or services.flows.select(hook.channel, hook.to_number)
    if flow is not None:
        count_fallback(hook.channel, flow.name, cause)
    queue = services.store.queue(flow.fallback_queue) if flow else None
    if flow is None or queue is None:
        return apology(hook), f"apology ({reason}, no fallback queue)"
    actions: list[Action] = [RouteToQueue(flow.fallback_queue, hook.contact.number)]
    queues = {flow.fallback_queue: queue}
    hook.trace.fell_back(flow, reason)
    if hook.channel == "voice":
        # After a dial that failed, the fallback queue is the last target: if it fails too,
        # the caller hears the apology rather than being dialled there again and again.
        twiml = render_voice(actions, queues, services.urls,
                             last_resort=hook.trace.endpoint == "voice_dial")
    else:
        twiml = render_messaging(actions, queues, inbound=hook.params)
    return twiml, f"fallback queue {flow.fallback_queue} ({reason})"


def missing_version_answer(services: Services, hook: Webhook, missing: PinnedVersionMissing
                           ) -> Answer:
    """A session's flows version cannot be had: its flow's fallback queue, as the live version
    has it (else the number's flow's). Logged once a version, without a traceback."""
    if missing.version not in _told_missing:
        _told_missing.add(missing.version)
        log.warning("sessions on %s go to their flow's fallback queue", missing)
    flow = services.flows.flows.get(missing.flow or "")
    return fallback_answer(services, hook, flow, "missing flow version", cause=missing.reason)


def apology(hook: Webhook) -> str:
    """The channel's apology, for a contact no queue can take."""
    return render_voice_apology() if hook.channel == "voice" else render_messaging_apology()
