"""The data path of a webhook, top to bottom: read the form -> verify the signature -> pick the
flow -> run it within the deadline -> look up the queues it routes to -> render TwiML."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from ivr.channels.messaging import render_messaging, render_messaging_apology
from ivr.channels.voice import render_voice, render_voice_apology
from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.loader import FlowSet
from ivr.flows.runner import run_flow
from ivr.flows.step import Channel, Contact, Run
from ivr.logs import mask_number
from ivr.queues import Queue
from ivr.store import Store
from ivr.twilio_security import WebhookVerifier

log = logging.getLogger("ivr.webhook")

MAX_FIELDS = 200
MAX_ADDRESS_LENGTH = 256
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class ChannelSpec:
    name: Channel
    sid_param: str  # the parameter that identifies the call or message
    render: Callable[[list[Action], Mapping[str, Queue]], str]
    render_apology: Callable[[], str]


VOICE = ChannelSpec("voice", "CallSid", render_voice, render_voice_apology)
MESSAGING = ChannelSpec("messaging", "MessageSid", render_messaging, render_messaging_apology)


@dataclass
class Services:
    """What webhooks share in one process, built once in the app's lifespan."""

    flows: FlowSet
    store: Store
    http: httpx.AsyncClient
    verifier: WebhookVerifier
    flow_settings: dict[str, Any]  # the settings flows may read
    decision_deadline: float
    max_body_bytes: int


class BadWebhook(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def handle_webhook(request: Request, channel: ChannelSpec) -> Response:
    services: Services = request.app.state.services
    started = time.perf_counter()
    try:
        form = await _read_form(request, services.max_body_bytes)
        url = services.verifier.signed_url(str(request.url), request.url.path, request.url.query)
        rejection = services.verifier.rejection(url, form, request.headers)
        if rejection is not None:
            log.warning("rejected %s webhook: %s", channel.name, rejection)
            return PlainTextResponse("Forbidden: invalid Twilio signature", status_code=403)
        params = {key: form[key] for key in form}  # one value a name (the last, if repeated)
        contact = _contact(params, channel)
        sid = _required(params, channel.sid_param)
    except BadWebhook as exc:
        log.warning("bad %s webhook: %s", channel.name, exc.reason)
        return PlainTextResponse(exc.reason, status_code=exc.status)

    try:
        twiml, summary = await _answer(services, channel, contact, params)
    except Exception:  # every failure still answers the contact
        log.exception("%s %s: could not answer; sending the apology", channel.name, sid)
        twiml, summary = channel.render_apology(), "apology (internal error)"
    log.info(
        "%s %s from %s: %s (%.1f ms)",
        channel.name,
        sid,
        mask_number(contact.address),
        summary,
        (time.perf_counter() - started) * 1000,
    )
    return Response(twiml, media_type="text/xml")


async def _answer(
    services: Services, channel: ChannelSpec, contact: Contact, params: dict[str, str]
) -> tuple[str, str]:
    to_number = params.get("To", "").removeprefix("whatsapp:")
    flow = services.flows.select(channel.name, to_number)
    if flow is None:
        return channel.render_apology(), f"no {channel.name} flow for {mask_number(to_number)}"
    loop = asyncio.get_running_loop()
    run = Run(
        contact=contact,
        params=params,
        settings=services.flow_settings,
        http=services.http,
        deadline=loop.time() + services.decision_deadline,
    )
    outcome = await run_flow(flow, run)
    actions, queues = _resolve_queues(services.store, outcome.actions, flow.fallback_queue)
    routed = [a.queue for a in actions if isinstance(a, RouteToQueue)]
    summary = f"flow {flow.name} via {'>'.join(outcome.trace)} -> {routed[0] if routed else 'end'}"
    if channel is MESSAGING and routed and routed[0] in queues and not queues[routed[0]].message_to:
        summary += " (queue has no message_to: not forwarded)"
    if outcome.fallback_reason:
        summary += f" (fallback: {outcome.fallback_reason})"
    return channel.render(actions, queues), summary


def _resolve_queues(
    store: Store, actions: list[Action], fallback_queue: str
) -> tuple[list[Action], dict[str, Queue]]:
    """The live configuration of each queue routed to. A route to a queue that no longer exists
    (an admin removed it) goes to the flow's fallback queue instead."""
    queues: dict[str, Queue] = {}
    resolved: list[Action] = []
    for action in actions:
        if isinstance(action, RouteToQueue):
            for name in (action.queue, fallback_queue):
                queue = store.queue(name)
                if queue is not None:
                    queues[name] = queue
                    action = RouteToQueue(name, action.note)
                    break
            else:
                log.error("queues %r and %r are not configured", action.queue, fallback_queue)
        resolved.append(action)
    return resolved, queues


async def _read_form(request: Request, max_bytes: int) -> ImmutableMultiDict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise BadWebhook(415, f"Unsupported Media Type: expected {FORM_TYPE}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadWebhook(413, f"Payload Too Large: over {max_bytes} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise BadWebhook(413, f"Payload Too Large: over {max_bytes} bytes")
    except ClientDisconnect:
        raise BadWebhook(400, "Bad Request: the client disconnected mid-body") from None
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadWebhook(400, "Bad Request: the form is not valid UTF-8") from None
    except ValueError:
        raise BadWebhook(400, f"Bad Request: more than {MAX_FIELDS} parameters") from None
    return ImmutableMultiDict(pairs)


def _required(params: dict[str, str], name: str, max_length: int = 64) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise BadWebhook(400, f"Bad Request: missing {name}")
    if len(value) > max_length or not value.isprintable():
        raise BadWebhook(400, f"Bad Request: invalid {name}")
    return value


def _contact(params: dict[str, str], channel: ChannelSpec) -> Contact:
    address = _required(params, "From", MAX_ADDRESS_LENGTH)
    return Contact(number=address.removeprefix("whatsapp:"), address=address, channel=channel.name)
