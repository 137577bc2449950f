"""The data path of a webhook, top to bottom: read the form -> verify the signature -> replay a
retried webhook's answer -> load the session -> run (or resume) the flow within the deadline ->
look up the queues it routes to -> render TwiML -> save the session and the contact memory.
Along the way the webhook's CallTrace notes what was done, for its log line, the metrics and the
call trace kept in Redis."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

from redis.exceptions import RedisError
from starlette.datastructures import URL
from starlette.types import ASGIApp, Receive, Scope, Send

from ivr.calltrace import CallTrace
from ivr.channels.messaging import render_messaging, render_messaging_apology
from ivr.channels.voice import (
    CallbackUrls,
    render_dial,
    render_hangup,
    render_hold,
    render_voice,
    render_voice_apology,
)
from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.http import HttpClient
from ivr.flows.loader import FlowSet
from ivr.flows.model import Flow
from ivr.flows.runner import Outcome, run_flow
from ivr.flows.step import Channel, Contact, Run, default_handoff_note
from ivr.flows.upstream import Upstreams
from ivr.logs import log_context, mask_number
from ivr.metrics import ROUTES, SIGNATURE_REJECTIONS, WEBHOOK_SECONDS, labelled
from ivr.queues import Queue
from ivr.redis.call_traces import CallTraces
from ivr.redis.conversations import HELD_TTL, Conversations
from ivr.redis.fetch_cache_purges import FetchCachePurges
from ivr.redis.queue_store import QueueStore
from ivr.twilio_security import WebhookVerifier

log = logging.getLogger("ivr.webhook")

MAX_FIELDS = 200
MAX_ADDRESS_LENGTH = 256
FORM_TYPE = "application/x-www-form-urlencoded"
IDEMPOTENCY_HEADER = "i-twilio-idempotency-token"
TWIML = b"text/xml; charset=utf-8"
PLAIN_TEXT = b"text/plain; charset=utf-8"
# DialCallStatus values after which the caller has been connected: nothing more to do.
CONNECTED = {"completed", "answered"}
T = TypeVar("T")


@dataclass(frozen=True)
class HoldPolicy:
    after: float  # seconds before a caller hears the hold prompt
    prompt: str


@dataclass
class Services:
    """What webhooks share in one process, built once in the app's lifespan."""

    flows: FlowSet
    store: QueueStore
    conversations: Conversations
    http: HttpClient
    upstreams: Upstreams
    cache_purges: FetchCachePurges  # the admin's; every process applies them
    traces: CallTraces
    verifier: WebhookVerifier
    urls: CallbackUrls
    flow_settings: dict[str, Any]  # the settings flows may read
    flow_secrets: dict[str, str]  # `secrets.*`, which only fetch steps read
    decision_deadline: float
    hold: HoldPolicy
    max_body_bytes: int
    # Decisions still running after their caller was put on hold, by CallSid.
    held: dict[str, asyncio.Task[tuple[str, str]]] = field(default_factory=dict)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def background(self, operation: Awaitable[Any]) -> None:
        """Run `operation` after the answer is sent, keeping it alive until it is done."""
        task = asyncio.ensure_future(best_effort(operation, None, "background write"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class BadWebhook(Exception):
    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason  # for the client
        self.detail = detail or reason  # for the log


@dataclass
class Webhook:
    """A verified webhook: its parameters, who it is from, and what it is about."""

    channel: Channel
    params: dict[str, str]
    contact: Contact
    sid: str
    query: dict[str, str]
    trace: CallTrace
    to_number: str = field(init=False)

    def __post_init__(self) -> None:
        self.to_number = self.params.get("To", "").removeprefix("whatsapp:")

    @property
    def session_key(self) -> str:
        if self.channel == "voice":
            return f"voice:{self.sid}"
        return f"messaging:{self.to_number}:{self.contact.address}"


# --- the three endpoints ----------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A webhook endpoint, as a plain ASGI app: Starlette's Request and Response layers cost a
    tenth of a call's CPU, and a webhook needs none of what they offer."""

    name: str  # for metrics and traces: voice, voice_dial, messaging
    channel: Channel
    sid_param: str
    answer: Callable[[Services, Webhook], Awaitable[tuple[str, str]]]

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
    a root_path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def request_headers(scope: Scope) -> dict[str, str]:
    """A request's headers by name, lower-cased as ASGI servers give them; the first of a
    repeated one wins, as with Starlette's `Headers` (which scan the list at every lookup)."""
    return {name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(scope["headers"])}


async def _handle(scope: Scope, receive: Receive, endpoint: Endpoint) -> tuple[int, str, bytes]:
    services: Services = scope["app"].state.services
    started = time.perf_counter()
    channel = endpoint.channel
    headers = request_headers(scope)
    try:
        hook = await _verified_webhook(scope, receive, headers, services, endpoint)
    except BadWebhook as exc:
        if exc.status == 403:
            SIGNATURE_REJECTIONS.labels(endpoint.name).inc()
        log.warning("%s webhook refused: %s", channel, exc.detail)
        return exc.status, exc.reason, PLAIN_TEXT
    with log_context(**hook.trace.sid_field(), channel=channel):
        token = headers.get(IDEMPOTENCY_HEADER, "")[:200]
        if channel == "messaging":
            # One message of a contact at a time, in order, so that two messages arriving
            # together are both answered, and a retry finds the first answer recorded.
            async with services.conversations.lock(hook.session_key):
                twiml, summary = await _answer_once(services, hook, endpoint, token)
        else:
            twiml, summary = await _answer_once(services, hook, endpoint, token)
        _observe(services, hook.trace, summary, time.perf_counter() - started)
    return 200, twiml, TWIML


async def _answer_once(services: Services, hook: Webhook, endpoint: Endpoint, token: str
                       ) -> tuple[str, str]:
    """The TwiML and a summary for the log: the earlier answer if Twilio retries a webhook."""
    try:
        replayed = await best_effort(services.conversations.replay(token), None,
                                     "retry lookup") if token else None
        if replayed is not None:
            twiml, summary = replayed, "retry: the earlier answer, replayed"
        else:
            twiml, summary = await endpoint.answer(services, hook)
            if token:
                await _record_reply(services, hook, token, twiml)
    except Exception:  # every failure still answers the contact, with a route if there is one
        log.exception("%s %s: could not answer; routing to the fallback queue", hook.channel,
                      hook.sid)
        twiml, summary = _fallback_answer(services, hook)
    return twiml, summary


async def _record_reply(services: Services, hook: Webhook, token: str, twiml: str) -> None:
    """Keep the answer for a retry of this webhook. A message's is written before the lock is
    released, since a retry may be waiting on the lock. A call's retry comes seconds later and
    its lookup queues behind this write on the same connection, so the answer does not wait."""
    command = services.conversations.record_reply_command(token, twiml)
    if hook.channel == "messaging":
        await best_effort(services.conversations.pipeline.execute(command), None, "retry record")
    else:
        services.conversations.pipeline.send(command, what="retry record")


def _observe(services: Services, trace: CallTrace, summary: str, seconds: float) -> None:
    """The webhook's log line, its metrics and its stored trace (written in the background)."""
    _webhook_seconds(trace.endpoint).observe(seconds)
    _record(services, trace, summary, seconds)


def _record(services: Services, trace: CallTrace, summary: str, seconds: float) -> None:
    """What was decided: the log line, the route counted, the stored trace."""
    trace.finish(summary, seconds)
    if trace.decided:
        _routes(trace.channel, trace.flow, trace.route).inc()
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s from %s: %s (%.1f ms)", trace.channel, trace.sid, trace.caller, summary,
                 trace.duration_ms, extra=trace.log_fields())
    services.traces.record(trace)


_webhook_seconds = labelled(WEBHOOK_SECONDS)
_routes = labelled(ROUTES)


async def best_effort(operation: Awaitable[T], default: T, what: str) -> T:
    """Session and contact state make a call better, never possible: without Redis, a call is
    routed all the same, from the configuration in memory. The operations go through the
    auto-pipeline, which bounds them (ivr.redis.autopipeline.BATCH_TIMEOUT)."""
    try:
        return await operation
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("%s skipped: store unavailable (%s)", what, type(exc).__name__)
        return default


def _fallback_answer(services: Services, hook: Webhook, flow: Flow | None = None,
                     reason: str = "internal error") -> tuple[str, str]:
    """The flow's fallback queue, straight from memory; an apology only if there is none."""
    flow = flow or services.flows.select(hook.channel, hook.to_number)
    queue = services.store.queue(flow.fallback_queue) if flow else None
    if flow is None or queue is None:
        render = render_voice_apology if hook.channel == "voice" else render_messaging_apology
        return render(), f"apology ({reason}, no fallback queue)"
    actions: list[Action] = [RouteToQueue(flow.fallback_queue, hook.contact.number)]
    queues = {flow.fallback_queue: queue}
    hook.trace.fell_back(flow, reason)
    if hook.channel == "voice":
        twiml = render_voice(actions, queues, services.urls)
    else:
        twiml = render_messaging(actions, queues, inbound=hook.params)
    return twiml, f"fallback queue {flow.fallback_queue} ({reason})"


# --- voice ------------------------------------------------------------------------------------

async def _answer_call(services: Services, hook: Webhook) -> tuple[str, str]:
    """A call, or an answer to a question: decided at once, or after a hold prompt when the
    decision (a slow lookup) takes longer than `hold_after`."""
    if hook.query.get("held") == "1":
        return await _held_decision(services, hook)
    decision = asyncio.ensure_future(_decide_call(services, hook))
    if await _done_within(decision, services.hold.after):
        return decision.result()
    services.held[hook.sid] = decision
    decision.add_done_callback(lambda task: _keep_held_result(services, hook, task))
    return (render_hold(services.hold.prompt, services.urls.held()),
            f"on hold after {services.hold.after:g} s while the decision finishes")


async def _done_within(task: asyncio.Future[Any], seconds: float) -> bool:
    """Whether `task` is done within `seconds` (left running if not). asyncio.wait does the
    same with a set, a second future and two sets of callbacks: twice the CPU, on every call."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(seconds, wake)
    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


def _keep_held_result(services: Services, hook: Webhook,
                      task: asyncio.Task[tuple[str, str]]) -> None:
    """Publish a held call's decision for whichever instance Twilio's redirect reaches, and
    record it here, where it was made: the webhook's own record was of the hold prompt."""
    # The redirect takes it within seconds; a call hung up on hold never comes for it.
    asyncio.get_running_loop().call_later(HELD_TTL.total_seconds(), _forget_held, services,
                                          hook.sid, task)
    if task.cancelled() or task.exception() is not None:
        return
    twiml, summary = task.result()
    services.background(services.conversations.hold_result(hook.sid, twiml))
    _record(services, hook.trace, f"decided after the hold prompt: {summary}",
            time.time() - hook.trace.at)


def _forget_held(services: Services, sid: str, task: asyncio.Task[tuple[str, str]]) -> None:
    if services.held.get(sid) is task:
        del services.held[sid]


async def _held_decision(services: Services, hook: Webhook) -> tuple[str, str]:
    """The redirect after the hold prompt: the decision, from this process or from Redis."""
    local = services.held.pop(hook.sid, None)
    if local is not None:
        try:
            async with asyncio.timeout(services.decision_deadline + 1):
                twiml, summary = await asyncio.shield(local)
            return twiml, f"after hold: {summary}"
        except TimeoutError:
            pass
    else:
        try:
            twiml = await services.conversations.wait_for_hold_result(
                hook.sid, services.decision_deadline + 1)
        except (RedisError, OSError) as exc:
            log.warning("held decision unavailable: %s", type(exc).__name__)
            twiml = None
        if twiml is not None:
            return twiml, "after hold: the decision made by another instance"
    return _fallback_answer(services, hook, reason="held decision not found")


async def _decide_call(services: Services, hook: Webhook) -> tuple[str, str]:
    turn = hook.query.get("turn")
    # A call's first webhook has no session yet (a retry of it is replayed by its idempotency
    # token): no round trip to look for one.
    session = await _load_session(services, hook) if turn is not None else None
    if session is not None and session.get("turn") != _int(turn):
        # Twilio asked again for a turn already answered: the same answer, the flow not advanced.
        return session["twiml"], f"retry of turn {turn or 0}: the earlier answer, replayed"
    if session is not None and session.get("waiting_at"):
        answer = answer_in(hook.channel, hook.params)
        return await _run(services, hook, session, resume_at=session["waiting_at"], answer=answer)
    if turn is not None:  # an answer for a session that expired: start over
        log.info("voice %s: answer to an expired question; starting the flow over", hook.sid)
    return await _run(services, hook, None)


async def _answer_dial_result(services: Services, hook: Webhook) -> tuple[str, str]:
    """Where <Dial action> comes back: done if the caller was connected; else the next SIP URI
    of the queue, then of its overflow queues, then the flow's `unanswered` step."""
    status = hook.params.get("DialCallStatus", "")
    sip_code = hook.params.get("DialSipResponseCode", "-")
    queue_name = hook.query.get("queue", "")
    attempt = _int(hook.query.get("try")) or 0
    outcome = f"dial {queue_name}#{attempt}: {status or 'no status'} (SIP {sip_code})"
    if status in CONNECTED:
        await _end_session(services, hook)
        return render_hangup(), outcome
    targets = dial_targets(services.store, queue_name)
    if attempt + 1 < len(targets):
        target_queue, uri = targets[attempt + 1]
        last_resort = hook.query.get("last") == "1"
        return (render_dial(uri, services.urls.dial(queue_name, attempt + 1, last_resort)),
                f"{outcome}; failing over to {target_queue}#{attempt + 1}")
    session = await _load_session(services, hook)
    flow = _session_flow(services, session, hook)
    if flow is None or flow.unanswered is None or hook.query.get("last") == "1":
        await _end_session(services, hook)
        return render_voice_apology(), f"{outcome}; every target failed: apology"
    # A route the unanswered step makes (say, to voicemail) is the last one tried.
    twiml, summary = await _run(services, hook, session, start_at=flow.unanswered, flow=flow,
                                last_resort=True)
    return twiml, f"{outcome}; every target failed: {summary}"


def dial_targets(store: QueueStore, queue_name: str) -> list[tuple[str, str]]:
    """(queue, SIP URI) to try in order: the queue's URI, its fallbacks, then its overflow's."""
    targets: list[tuple[str, str]] = []
    seen: set[str] = set()
    name: str | None = queue_name
    while name is not None and name not in seen:  # overflow cycles are refused; still, guard
        seen.add(name)
        queue = store.queue(name)
        if queue is None:
            break
        targets += [(name, uri) for uri in (queue.sip_uri, *queue.fallback_sip_uris)]
        name = queue.overflow
    return targets


# --- messaging --------------------------------------------------------------------------------

async def _answer_message(services: Services, hook: Webhook) -> tuple[str, str]:
    session = await _load_session(services, hook)
    if session is not None and session.get("routed_to"):
        return await _forward_to_queue(services, hook, session)
    if session is not None and session.get("waiting_at"):
        return await _run(services, hook, session, resume_at=session["waiting_at"],
                          answer=answer_in(hook.channel, hook.params))
    return await _run(services, hook, None)


async def _forward_to_queue(
    services: Services, hook: Webhook, session: dict[str, Any]
) -> tuple[str, str]:
    """A contact already handed over keeps talking to the same queue: no new lookup."""
    queue_name = session["routed_to"]
    flow = _session_flow(services, session, hook)
    step = flow.steps.get(session.get("route_step", "")) if flow else None
    run = _new_run(services, hook, session)
    note = (step.handoff_note if step else default_handoff_note)(run.variables)
    actions: list[Action] = [RouteToQueue(queue_name, note)]
    queue = services.store.queue(queue_name)
    queues = {queue_name: queue} if queue is not None else {}
    hook.trace.handed_over(session.get("flow"), queue_name)
    # Already acknowledged when handed over: forwarding alone, without a new acknowledgement.
    twiml = render_messaging(actions, queues, acknowledge=False, inbound=hook.params)
    if flow is not None:  # each message keeps the hand-off alive for another expire_after
        await best_effort(services.conversations.save_session(
            hook.session_key, session, flow.expire_after), None, "session save")
    if queue is None:
        done = f"not forwarded: queue {queue_name} no longer exists (apology sent)"
    elif queue.message_to is None:
        done = f"not forwarded: queue {queue_name} has no message_to"
    else:
        done = f"forwarded to queue {queue_name}"
    return twiml, f"{done} (conversation already handed off)"


# --- running a flow ---------------------------------------------------------------------------

async def _run(
    services: Services,
    hook: Webhook,
    session: dict[str, Any] | None,
    *,
    resume_at: str | None = None,
    answer: str | None = None,
    start_at: str | None = None,
    flow: Flow | None = None,
    last_resort: bool = False,
) -> tuple[str, str]:
    """Run the flow (new, resumed at a question, or from a step), answer, and keep the session."""
    flow = flow or _session_flow(services, session, hook)
    if flow is None:
        render = render_voice_apology if hook.channel == "voice" else render_messaging_apology
        return render(), f"no {hook.channel} flow for {mask_number(hook.to_number)}"
    stored = session is not None
    if session is None or session.get("flow") != flow.name:
        memory = await best_effort(
            services.conversations.contact_memory(hook.contact.number), {}, "contact memory"
        ) if flow.reads_contact_memory else {}
        session = {"flow": flow.name, "memory": memory, "state": {}, "turn": 0}
        new_visit = True
    else:
        new_visit = False
    run = _new_run(services, hook, session)
    if start_at is not None:
        outcome = await run_flow(flow, run, start_at=start_at)
    else:
        outcome = await run_flow(flow, run, resume_at=resume_at, answer=answer)
    actions, queues = resolve_queues(outcome.actions, services.store.queue, flow.fallback_queue)

    turn = session["turn"] + 1
    if hook.channel == "voice":
        twiml = render_voice(actions, queues, services.urls, turn, last_resort)
    else:
        twiml = render_messaging(actions, queues, inbound=hook.params)
    routed = next((a.queue for a in actions if isinstance(a, RouteToQueue)), None)
    hook.trace.ran(flow, outcome, run, routed, answered_at=resume_at, answer=answer)
    session.update(state=run.state(), turn=turn, twiml=twiml, waiting_at=outcome.waiting_at,
                   routed_to=None, route_step=None)
    if outcome.waiting_at is None and routed is not None and _keep_after_route(
            hook, flow, queues.get(routed), stored):
        session.update(routed_to=routed, route_step=outcome.trace[-1])
    keep = outcome.waiting_at is not None or session["routed_to"] is not None
    saved = await _save(services, hook, session if keep else None, flow, run.saved_fields,
                        new_visit, stored, known="first_seen" in session["memory"],
                        wait=outcome.waiting_at is not None or hook.channel == "messaging")
    if outcome.waiting_at is not None and not saved:
        # Without a session the answer could not be taken: route now rather than ask forever.
        twiml, summary = _fallback_answer(services, hook, flow, "no session store")
        return twiml, f"{summary} instead of asking at {outcome.waiting_at}"
    return twiml, _summary(flow, outcome, routed, queues, hook.channel)


def answer_in(channel: Channel, params: dict[str, str]) -> str | None:
    """The contact's answer to a question: keys pressed or words spoken, or a message."""
    if channel == "voice":
        return params.get("Digits") or params.get("SpeechResult")
    return params.get("Body")


def _keep_after_route(hook: Webhook, flow: Flow, queue: Queue | None, stored: bool) -> bool:
    """Messaging: the sticky hand-off, if the queue takes messages at all. Voice: so that a
    retried answer is replayed (a call that was asked something), and for `unanswered`."""
    if hook.channel == "messaging":
        return queue is not None and queue.message_to is not None
    return stored or flow.unanswered is not None


async def _save(services: Services, hook: Webhook, session: dict[str, Any] | None, flow: Flow,
                saved_fields: dict[str, str], new_visit: bool, stored: bool, known: bool,
                wait: bool) -> bool:
    """Keep `session` (or end the one `stored` in Redis) and update the contact's memory, in
    one round trip; False if the store could not take it. Without `wait` the answer goes out
    without waiting for the write, and True says only that it was sent: what reads it next
    (this contact's next call or turn) queues behind it on the auto-pipeline's connection,
    or comes seconds later. A question (it needs its session) and a message (the next one
    waits on the lock, perhaps on another instance) wait."""
    conversations = services.conversations
    commands = conversations.remember_commands(hook.contact.number, saved_fields,
                                               visit=new_visit, known=known)
    if session is not None:
        commands.append(conversations.save_session_command(
            hook.session_key, session, flow.expire_after))
    elif stored:
        commands.append(conversations.end_session_command(hook.session_key))
    if not commands:
        return True
    if not wait:
        conversations.pipeline.send(*commands, what="state save")
        return True
    return await best_effort(conversations.pipeline.execute(*commands), None,
                             "state save") is not None


async def _load_session(services: Services, hook: Webhook) -> dict[str, Any] | None:
    session = await best_effort(services.conversations.session(hook.session_key), None,
                                "session load")
    if session is not None and session.get("flow") not in services.flows.flows:
        # Its flow was removed or renamed by a deploy: its steps mean nothing any more.
        log.info("%s %s: session of a flow no longer loaded; starting over", hook.channel,
                 hook.sid)
        return None
    return session


async def _end_session(services: Services, hook: Webhook) -> None:
    await best_effort(services.conversations.end_session(hook.session_key), None, "session end")


def _new_run(services: Services, hook: Webhook, session: dict[str, Any] | None) -> Run:
    contact = Contact(hook.contact.number, hook.contact.address, hook.channel,
                      memory=(session or {}).get("memory", {}))
    run = Run(
        contact=contact,
        params=hook.params,
        settings=services.flow_settings,
        secrets=services.flow_secrets,
        http=services.http,
        upstreams=services.upstreams,
        deadline=asyncio.get_running_loop().time() + services.decision_deadline,
    )
    if session is not None:
        run.restore(session.get("state", {}))
    return run


def _session_flow(services: Services, session: dict[str, Any] | None, hook: Webhook
                  ) -> Flow | None:
    """The flow a session runs, or for a new one the flow bound to the channel and number."""
    if session is not None and session.get("flow") in services.flows.flows:
        return services.flows.flows[session["flow"]]
    return services.flows.select(hook.channel, hook.to_number)


def resolve_queues(
    actions: list[Action], lookup: Callable[[str], Queue | None], fallback_queue: str
) -> tuple[list[Action], dict[str, Queue]]:
    """The configuration of each queue routed to (`lookup`: the live one). A route to a queue
    that no longer exists (an admin removed it) goes to the flow's fallback queue instead."""
    queues: dict[str, Queue] = {}
    resolved: list[Action] = []
    for action in actions:
        if isinstance(action, RouteToQueue):
            for name in (action.queue, fallback_queue):
                queue = lookup(name)
                if queue is not None:
                    queues[name] = queue
                    action = RouteToQueue(name, action.note)
                    break
            else:
                log.error("queues %r and %r are not configured", action.queue, fallback_queue)
        resolved.append(action)
    return resolved, queues


def _summary(flow: Flow, outcome: Outcome, routed: str | None, queues: dict[str, Queue],
             channel: Channel) -> str:
    end = f"waits at {outcome.waiting_at}" if outcome.waiting_at else f"-> {routed or 'end'}"
    summary = f"flow {flow.name} via {'>'.join(outcome.trace)} {end}"
    if outcome.fallback_reason:
        summary += f" (fallback: {outcome.fallback_reason})"
    if channel == "messaging" and routed in queues and not queues[routed].message_to:
        # Nobody will read it: an operator must hear of it, not find it in an info line.
        log.warning("queue %s has no message_to: a conversation handed to it was not forwarded "
                    "to anyone", routed)
        summary += " (queue has no message_to: not forwarded)"
    return summary


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


# --- reading and checking the request ---------------------------------------------------------

async def _verified_webhook(scope: Scope, receive: Receive, headers: dict[str, str],
                            services: Services, endpoint: Endpoint) -> Webhook:
    pairs = parse_form(await _read_body(receive, headers, services.max_body_bytes))
    query = scope["query_string"].decode("latin-1")
    url = services.verifier.signed_url(
        lambda: _request_url(scope.get("scheme", "http"), scope.get("server"), scope["path"],
                             scope["query_string"], headers.get("host")),
        scope["path"], query)
    params = dict(pairs)  # one value a name (the last, if repeated)
    rejection = services.verifier.rejection(url, pairs, headers,
                                            repeats=len(params) != len(pairs))
    if rejection is not None:
        raise BadWebhook(403, "Forbidden: invalid Twilio signature", detail=rejection)
    address = _required(params, "From", MAX_ADDRESS_LENGTH)
    sid = _required(params, endpoint.sid_param)
    channel = endpoint.channel
    contact = Contact(address.removeprefix("whatsapp:"), address, channel)
    trace = CallTrace(endpoint.name, channel, sid, mask_number(address))
    # A call's first webhook has no query: only redirects and answers carry one.
    query_params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    return Webhook(channel, params, contact, sid, query_params, trace)


@functools.lru_cache(maxsize=1024)
def _request_url(scheme: str, server: tuple[str, int] | None, path: str, query_string: bytes,
                 host: str | None) -> str:
    """The URL the request was made to, as Starlette spells it: a webhook's are few."""
    headers = [(b"host", host.encode("latin-1"))] if host is not None else []
    return str(URL(scope={"scheme": scheme, "server": server, "path": path,
                          "query_string": query_string, "headers": headers}))


async def _read_body(receive: Receive, headers: dict[str, str], max_bytes: int) -> bytes:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise BadWebhook(415, f"Unsupported Media Type: expected {FORM_TYPE}")
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadWebhook(413, f"Payload Too Large: over {max_bytes} bytes")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadWebhook(400, "Bad Request: the client disconnected mid-body")
        body += message.get("body", b"")
        if len(body) > max_bytes:
            raise BadWebhook(413, f"Payload Too Large: over {max_bytes} bytes")
        if not message.get("more_body", False):
            return body


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a form body, as `urllib.parse.parse_qsl` reads them with
    blank values kept and strict UTF-8 (the tests hold the two side by side), at half its
    cost: a part needs unquoting only if it has a `%`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook(400, "Bad Request: the form is not valid UTF-8") from None
    if text.count("&") >= MAX_FIELDS:
        raise BadWebhook(400, f"Bad Request: more than {MAX_FIELDS} parameters")
    pairs = []
    try:
        # `+` is a space wherever it is: replaced once, before the split, which it cannot move.
        for part in text.replace("+", " ").split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")
            if "%" in name:
                name = _unquote(name)
            if "%" in value:
                value = _unquote(value)
            pairs.append((name, value))
    except UnicodeDecodeError:
        raise BadWebhook(400, "Bad Request: the form is not valid UTF-8") from None
    return pairs


@functools.lru_cache(maxsize=4096)  # To, Called, the caller's number: the same, call after call
def _unquote(text: str) -> str:
    return unquote(text, errors="strict")


def _required(params: dict[str, str], name: str, max_length: int = 64) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise BadWebhook(400, f"Bad Request: missing {name}")
    if len(value) > max_length or not value.isprintable():
        raise BadWebhook(400, f"Bad Request: invalid {name}")
    return value


ENDPOINTS = {
    "/twilio/voice": Endpoint("voice", "voice", "CallSid", _answer_call),
    "/twilio/voice/dial": Endpoint("voice_dial", "voice", "CallSid", _answer_dial_result),
    "/twilio/messaging": Endpoint("messaging", "messaging", "MessageSid", _answer_message),
}
