"""The data path of a webhook, top to bottom: read and verify it -> replay a retry's earlier
answer -> load the session -> take a turn of the flow (holding a caller if slow) -> render
TwiML -> save the session and the contact memory. Each Twilio peculiarity is in a module of
its own: inbound (the request), replay (retries), hold (hold while slow), dial_result
(`<Dial action>` failover), handoff (messaging's sticky hand-off); the turn is ivr.turn's,
shared with `ivr simulate`. Along the way the webhook's CallTrace notes what was done, for its
log line, the metrics and the call trace kept in Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from ivr.channels import hold, replay
from ivr.channels.answer import Answer
from ivr.channels.dial_result import DialResult
from ivr.channels.fallback import apology, fallback_answer, missing_version_answer
from ivr.channels.handoff import forward_to_queue
from ivr.channels.inbound import (
    BadWebhook,
    Webhook,
    answer_in,
    request_headers,
    verified_webhook,
)
from ivr.channels.messaging import render_messaging
from ivr.channels.reporting import report_webhook
from ivr.channels.sessions import (
    end_session,
    flow_for,
    load_session,
    pinned_or_live,
    session_flows,
)
from ivr.channels.voice import render_hangup, render_voice
from ivr.flow_versions import PinnedVersionMissing
from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.model import Flow
from ivr.flows.step import Channel
from ivr.logs import log_context, mask_number
from ivr.metrics import FALLBACK_ERROR, FALLBACK_REDIS, SIGNATURE_REJECTIONS
from ivr.services import Services, best_effort
from ivr.session import Session
from ivr.turn import TakenTurn, take_turn

log = logging.getLogger("ivr.webhook")

TWIML = b"text/xml; charset=utf-8"
PLAIN_TEXT = b"text/plain; charset=utf-8"


# --- the three endpoints ----------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A webhook endpoint, as a plain ASGI app: a webhook needs nothing Starlette's Request and
    Response offer, and on the hot path they cost (bench/README.md, ivr/channels/webhook.py)."""

    name: str  # for metrics and traces: voice, voice_dial, messaging
    channel: Channel
    sid_param: str
    answer: Callable[[Services, Webhook], Awaitable[Answer]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, media_type = await _handle(scope, receive, self)
        except Exception:  # a bug before the flow (which answers its own failures): a 500
            log.exception("%s webhook failed", self.name)
            status, body, media_type = 500, "Internal Server Error", PLAIN_TEXT
        data = body.encode("utf-8")
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", media_type), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


class WebhookRoutes:
    """ASGI middleware: a POST to a webhook goes straight to its endpoint, past the router and
    Starlette's middleware (the router also has the endpoints, for other methods' 405 and for
    a root_path). ivr.app.create_app puts it outside Starlette's stack."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- every webhook: read and verify, replay a retry, answer -----------------------------------

async def _handle(scope: Scope, receive: Receive, endpoint: Endpoint) -> tuple[int, str, bytes]:
    services: Services = scope["app"].state.services
    started = time.perf_counter()
    headers = request_headers(scope)
    try:
        hook = await verified_webhook(scope, receive, headers, services.verifier,
                                      services.max_body_bytes, endpoint.name, endpoint.channel,
                                      endpoint.sid_param)
    except BadWebhook as exc:
        if exc.status == 403:
            SIGNATURE_REJECTIONS.labels(endpoint.name).inc()
        log.warning("%s webhook refused: %s", endpoint.channel, exc.detail)
        return exc.status, exc.reason, PLAIN_TEXT
    with log_context(**hook.trace.sid_field(), channel=hook.channel):
        token = replay.idempotency_token(headers)
        if hook.channel == "messaging":
            # One message of a contact at a time, in order, so that two messages arriving
            # together are both answered, and a retry finds the first answer recorded.
            async with services.conversations.lock(hook.session_key):
                twiml, summary = await _answer_once(services, hook, endpoint, token)
        else:
            twiml, summary = await _answer_once(services, hook, endpoint, token)
        report_webhook(services, hook.trace, summary, time.perf_counter() - started)
    return 200, twiml, TWIML


async def _answer_once(services: Services, hook: Webhook, endpoint: Endpoint, token: str
                       ) -> Answer:
    """The endpoint's answer, or the earlier one if Twilio retries a webhook."""
    try:
        replayed = await replay.earlier_answer(services, token) if token else None
        if replayed is not None:
            return replayed, "retry: the earlier answer, replayed"
        twiml, summary = await endpoint.answer(services, hook)
        await replay.keep_answer(services, hook, token, twiml)
    except PinnedVersionMissing as exc:  # its flow's fallback queue, in the live version
        twiml, summary = missing_version_answer(services, hook, exc)
    except Exception:  # every failure still answers the contact, with a route if there is one
        log.exception("%s %s: could not answer; routing to the fallback queue", hook.channel,
                      hook.sid)
        twiml, summary = fallback_answer(services, hook, cause=FALLBACK_ERROR)
    return twiml, summary


# --- POST /twilio/voice -----------------------------------------------------------------------

async def _answer_call(services: Services, hook: Webhook) -> Answer:
    """A call, or an answer to a question: decided at once, or after a hold prompt when the
    decision (a slow lookup) takes longer than `hold_after`."""
    if hold.is_redirect_after_hold(hook):
        return await hold.held_decision(services, hook)
    return await hold.decided_or_held(services, hook, _decide_call(services, hook))


async def _decide_call(services: Services, hook: Webhook) -> Answer:
    turn = hook.query.get("turn")
    # A call's first webhook has no session yet (a retry of it is replayed by its idempotency
    # token): no round trip to look for one.
    session = await load_session(services, hook) if turn is not None else None
    if session is not None and session.turn != _int(turn):
        # Twilio asked again for a turn already answered: the same answer, the flow not advanced.
        return session.twiml, f"retry of turn {turn or 0}: the earlier answer, replayed"
    if session is not None and session.waiting_at:
        return await _answer_turn(services, hook, session,
                                  answer=answer_in(hook.channel, hook.params))
    if turn is not None:  # an answer for a session that expired: start over
        log.info("voice %s: answer to an expired question; starting the flow over", hook.sid)
    return await _answer_turn(services, hook, None)


# --- POST /twilio/voice/dial ------------------------------------------------------------------

async def _answer_dial_result(services: Services, hook: Webhook) -> Answer:
    """Where <Dial action> comes back: done if the caller was connected; else the next SIP URI
    of the queue, then of its overflow queues, then the flow's `unanswered` step."""
    dial = DialResult.of(hook)
    if dial.connected:
        await end_session(services, hook)
        return render_hangup(), dial.summary
    failover = dial.failover(services.store, services.urls)
    if failover is not None:
        return failover
    session = await load_session(services, hook)
    flow = None if dial.last_resort else flow_for(
        await pinned_or_live(services, session, hook), session, hook)
    if flow is None or flow.unanswered is None:
        await end_session(services, hook)
        return apology(hook), f"{dial.summary}; every target failed: apology"
    # A route the unanswered step makes (say, to voicemail) is the last one tried.
    twiml, summary = await _answer_turn(services, hook, session, start_at=flow.unanswered,
                                        flow=flow, last_resort=True)
    return twiml, f"{dial.summary}; every target failed: {summary}"


# --- POST /twilio/messaging -------------------------------------------------------------------

async def _answer_message(services: Services, hook: Webhook) -> Answer:
    session = await load_session(services, hook)
    if session is not None and session.routed_to is not None:
        if session.reroute_from is None:  # the sticky hand-off
            return await forward_to_queue(services, hook, session)
        # Handed off because a lookup failed: decided again, from that lookup.
        twiml, summary = await _answer_turn(services, hook, session,
                                            start_at=session.reroute_from,
                                            handed_to=session.routed_to)
        return twiml, f"{summary} (decided again: handed to {session.routed_to} when a " \
                      "lookup failed)"
    if session is not None and session.waiting_at:
        return await _answer_turn(services, hook, session,
                                  answer=answer_in(hook.channel, hook.params))
    return await _answer_turn(services, hook, None)


# --- a turn of a flow: take it, render it, keep the session -----------------------------------

async def _answer_turn(
    services: Services,
    hook: Webhook,
    stored: Session | None,
    *,
    answer: str | None = None,
    start_at: str | None = None,
    flow: Flow | None = None,
    last_resort: bool = False,
    handed_to: str | None = None,
) -> Answer:
    """Take a turn of the flow (new, resumed at a question, or from a step), answer, and keep
    the session. `handed_to`: the queue a conversation decided again was handed to."""
    if flow is None:
        flows = await session_flows(services, stored)
        flow, version = flow_for(flows, stored, hook), flows.version
    else:  # the dial result's unanswered step, of the flow its session runs
        version = services.flows.version
    if flow is None:
        return apology(hook), f"no {hook.channel} flow for {mask_number(hook.to_number)}"
    session = stored if stored is not None and stored.flow == flow.name else Session(
        flow.name, await _contact_memory(services, hook) if flow.reads_contact_memory else {},
        flow_version=version or None)
    taken = await take_turn(flow, session, hook.contact, hook.params, services.surroundings,
                            services.store.queue, answer=answer, start_at=start_at,
                            resumed=session is stored)
    twiml = _render(services, hook, taken, last_resort, handed_to)
    hook.trace.ran(flow, taken.outcome, taken.run, taken.routed,
                   answered_at=session.waiting_at if start_at is None else None, answer=answer)
    saved = await _save(services, hook, taken, twiml)
    if taken.outcome.waiting_at is not None and not saved:
        # Without a session the answer could not be taken: route now rather than ask forever.
        twiml, summary = fallback_answer(services, hook, flow, "no session store",
                                         cause=FALLBACK_REDIS)
        return twiml, f"{summary} instead of asking at {taken.outcome.waiting_at}"
    return twiml, _summary(taken, hook.channel)


def _contact_memory(services: Services, hook: Webhook) -> Awaitable[dict[str, str]]:
    """What a new session starts with, if its flow reads it: the contact's memory, or none
    without Redis. A plain function: no coroutine of its own a call."""
    return best_effort(services.conversations.contact_memory(hook.contact.number), {},
                       "contact memory")


def _render(services: Services, hook: Webhook, taken: TakenTurn, last_resort: bool,
            handed_to: str | None) -> str:
    if hook.channel == "voice":
        return render_voice(taken.actions, taken.queues, services.urls, taken.session.turn,
                            last_resort)
    if handed_to is not None and taken.routed == handed_to:
        # Decided again, to the queue it is with: forwarded, with nothing said again.
        routes: list[Action] = [a for a in taken.actions if isinstance(a, RouteToQueue)]
        return render_messaging(routes, taken.queues, acknowledge=False, inbound=hook.params)
    return render_messaging(taken.actions, taken.queues, inbound=hook.params)


async def _save(services: Services, hook: Webhook, taken: TakenTurn, twiml: str) -> bool:
    """Keep the session after `taken`, with its answer `twiml` to replay, or end the one it
    resumed, and update the contact's memory, in one round trip; False if the store could not
    take it (its contact memory is then written when Redis answers again, ivr.redis.
    state_writes). A call's turn that does not ask goes out without waiting for the write, and True
    says only that it was sent: what reads it next (this contact's next call or turn) queues
    behind it on the auto-pipeline's connection, or comes seconds later. A question (it needs
    its session) and a message (the next one waits on the lock, perhaps on another instance)
    wait."""
    conversations = services.conversations
    after = taken.session
    commands = conversations.remember_commands(hook.contact.number, taken.run.saved_fields,
                                               visit=not taken.resumed,
                                               known="first_seen" in after.memory)
    if taken.kept:
        after.twiml = twiml
        commands.append(services.sessions.save_command(hook.session_key, after,
                                                       taken.flow.expire_after))
    elif taken.resumed:
        commands.append(services.sessions.end_command(hook.session_key))
    if not commands:
        return True
    if after.waiting_at is None and hook.channel != "messaging":
        conversations.writes.send(*commands)
        return True
    return await conversations.writes.execute(*commands)


def _summary(taken: TakenTurn, channel: Channel) -> str:
    flow, outcome, routed = taken.flow, taken.outcome, taken.routed
    end = f"waits at {outcome.waiting_at}" if outcome.waiting_at else f"-> {routed or 'end'}"
    summary = f"flow {flow.name} via {'>'.join(outcome.trace)} {end}"
    if outcome.fallback_reason:
        summary += f" (fallback: {outcome.fallback_reason})"
    if channel == "messaging" and routed in taken.queues and not taken.queues[routed].message_to:
        # Nobody will read it: an operator must hear of it, not find it in an info line.
        log.warning("queue %s has no message_to: a conversation handed to it was not forwarded "
                    "to anyone", routed)
        summary += " (queue has no message_to: not forwarded)"
    return summary


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


ENDPOINTS = {
    "/twilio/voice": Endpoint("voice", "voice", "CallSid", _answer_call),
    "/twilio/voice/dial": Endpoint("voice_dial", "voice", "CallSid", _answer_dial_result),
    "/twilio/messaging": Endpoint("messaging", "messaging", "MessageSid", _answer_message),
}
