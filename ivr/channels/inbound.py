"""A webhook as Twilio sends it, read and verified: the form body (bounded, strict UTF-8), the
X-Twilio-Signature check, the parameters the server requires, and who and what it is about."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from starlette.datastructures import URL
from starlette.types import Receive, Scope

from ivr.calltrace import CallTrace
from ivr.flows.step import Channel, Contact
from ivr.logs import mask_number
from ivr.twilio_security import WebhookVerifier

MAX_FIELDS = 200
MAX_ADDRESS_LENGTH = 256
FORM_TYPE = "application/x-www-form-urlencoded"


class BadWebhook(Exception):
    """A request that is not a webhook as Twilio sends it: answered with `status`, not routed."""

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


def request_headers(scope: Scope) -> dict[str, str]:
    """A request's headers by name, lower-cased as ASGI servers give them; the first of a
    repeated one wins, as with Starlette's `Headers` (which scan the list at every lookup)."""
    return {name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(scope["headers"])}


def answer_in(channel: Channel, params: dict[str, str]) -> str | None:
    """The contact's answer to a question: keys pressed or words spoken, or a message."""
    if channel == "voice":
        return params.get("Digits") or params.get("SpeechResult")
    return params.get("Body")


async def verified_webhook(scope: Scope, receive: Receive, headers: dict[str, str],
                           verifier: WebhookVerifier, max_body_bytes: int, endpoint: str,
                           channel: Channel, sid_param: str) -> Webhook:
    """The webhook `endpoint` (voice, voice_dial, messaging) received; BadWebhook if its body,
    its signature or a parameter it requires is not as Twilio sends them."""
    pairs = parse_form(await _read_body(receive, headers, max_body_bytes))
    query = scope["query_string"].decode("latin-1")
    url = verifier.signed_url(
        lambda: _request_url(scope.get("scheme", "http"), scope.get("server"), scope["path"],
                             scope["query_string"], headers.get("host")),
        scope["path"], query)
    params = dict(pairs)  # one value a name (the last, if repeated)
    rejection = verifier.rejection(url, pairs, headers, repeats=len(params) != len(pairs))
    if rejection is not None:
        raise BadWebhook(403, "Forbidden: invalid Twilio signature", detail=rejection)
    address = _required(params, "From", MAX_ADDRESS_LENGTH)
    sid = _required(params, sid_param)
    contact = Contact(address.removeprefix("whatsapp:"), address, channel)
    trace = CallTrace(endpoint, channel, sid, mask_number(address))
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
    blank values kept and strict UTF-8 (the tests hold the two side by side), for less: a part
    needs unquoting only if it has a `%` (bench/README.md, ivr/channels/inbound.py)."""
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
