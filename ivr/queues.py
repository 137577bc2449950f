"""Queues: where a route sends a call (SIP URIs) or a conversation (a messaging address).

The same models validate `sip_config/queues.yaml` at start-up and, later, every admin change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ivr.validation import E164_PATTERN, describe_errors
from ivr.yamlfile import YamlFileError, read_yaml

MAX_SIP_URI_LENGTH = 254  # Twilio: a <Sip> URI is under 255 characters.

# RFC 3261, section 25.1: SIP-URI / SIPS-URI. Hosts are checked separately below.
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER = rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+"
_PASSWORD = rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*"
_PARAM = rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+"
_HEADER = rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*"
_HNAME = rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})+"
_SIP_URI = re.compile(
    rf"(?P<scheme>(?i:sips?)):"
    rf"(?:(?P<user>{_USER})(?::{_PASSWORD})?@)?"
    rf"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
    rf"(?::(?P<port>[0-9]{{1,5}}))?"
    rf"(?P<params>(?:;{_PARAM}(?:={_PARAM})?)*)"
    rf"(?:\?{_HNAME}={_HEADER}(?:&{_HNAME}={_HEADER})*)?",
)
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?"
)
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_MESSAGE_ADDRESS = re.compile(f"(?:whatsapp:)?{E164_PATTERN}")
QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")


def check_sip_uri(uri: str) -> str:
    """Return `uri` when it is a SIP or SIPS URI Twilio can dial; raise ValueError saying why not."""
    if not isinstance(uri, str) or not uri:
        raise ValueError("a SIP URI is required")
    if len(uri) > MAX_SIP_URI_LENGTH:
        raise ValueError(f"is {len(uri)} characters; a SIP URI must be under 255")
    if any(c.isspace() for c in uri):
        raise ValueError("must not contain whitespace")
    if any(c in uri for c in "<>\"'`{}"):
        raise ValueError("must not contain markup or quotes")
    if not uri.lower().startswith(("sip:", "sips:")):
        raise ValueError("must start with sip: or sips:")
    match = _SIP_URI.fullmatch(uri)
    if match is None:
        raise ValueError("is not a valid SIP URI (RFC 3261), e.g. sip:queue@pbx.example.com")
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"has an invalid IPv6 host {host}") from None
    elif _IPV4.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"has an invalid IPv4 host {host}") from None
    elif not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise ValueError(f"has an invalid host name {host!r}")
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        raise ValueError(f"has an invalid port {match['port']}")
    return uri


def check_message_address(address: str) -> str:
    if not _MESSAGE_ADDRESS.fullmatch(address):
        raise ValueError("must be an E.164 number such as +15551234567 or whatsapp:+15551234567")
    return address


def check_queue_name(name: str) -> str:
    if not QUEUE_NAME.fullmatch(name):
        raise ValueError(
            "queue names are 1 to 64 lower-case letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return name


SipUri = Annotated[str, AfterValidator(check_sip_uri)]
MessageAddress = Annotated[str, AfterValidator(check_message_address)]
QueueName = Annotated[str, AfterValidator(check_queue_name)]


class Queue(BaseModel):
    """One queue's routing targets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sip_uri: SipUri
    fallback_sip_uris: tuple[SipUri, ...] = Field(default=(), max_length=10)
    overflow: QueueName | None = None
    message_to: MessageAddress | None = None
    display_name: str | None = Field(default=None, max_length=100)


MAX_SEARCH_CHARS = 200  # of a search of the queues (the admin API's and page's)


def queue_matches(name: str, queue: Queue, search: str) -> bool:
    """Whether `search` (any case) is in the queue's name, display name, a SIP URI or its
    messaging address; an empty search finds every queue."""
    if not search:
        return True
    text = search.casefold()
    return any(text in value.casefold() for value in (
        name, queue.display_name or "", queue.sip_uri, *queue.fallback_sip_uris,
        queue.message_to or ""))


def changed_fields(before: Queue | None, after: Queue | None) -> list[str]:
    """The fields whose value differs from `before` to `after`, in the model's order. A queue
    that does not exist (None) has every field at its default, and no SIP URI."""
    old = before.model_dump() if before is not None else {}
    new = after.model_dump() if after is not None else {}
    return [field for field, info in Queue.model_fields.items()
            if old.get(field, info.default) != new.get(field, info.default)]


class QueueConfig(BaseModel):
    """The whole `queues.yaml`: every queue by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queues: dict[QueueName, Queue] = Field(min_length=1)

    @model_validator(mode="after")
    def _overflow_names_a_queue_without_cycles(self) -> QueueConfig:
        check_overflow(self.queues)
        return self


def check_overflow(queues: Mapping[str, Queue]) -> None:
    """Raise ValueError when an `overflow` names no queue or overflows lead back to the start."""
    for name in queues:
        check_overflow_from(name, queues)


def check_overflow_from(name: str, queues: Mapping[str, Queue]) -> None:
    """Raise ValueError when the overflows from queue `name` reach no queue, or come back."""
    seen = [name]
    current = queues[name]
    while current.overflow is not None:
        if current.overflow not in queues:
            raise ValueError(f"queue {seen[-1]!r}: overflow {current.overflow!r} is not a queue")
        if current.overflow in seen:
            cycle = " -> ".join([*seen, current.overflow])
            raise ValueError(f"queue {name!r}: overflow cycle {cycle}")
        seen.append(current.overflow)
        current = queues[current.overflow]


class QueueConfigError(Exception):
    """`queues.yaml` is missing or invalid; the message names the file, the queue and the field."""


def load_queue_file(path: Path) -> QueueConfig:
    try:
        raw = read_yaml(path)
    except YamlFileError as exc:
        raise QueueConfigError(f"{exc} (IVR_SIP_CONFIG)") from None
    try:
        return QueueConfig.model_validate(raw)
    except ValidationError as exc:
        problems = describe_errors(exc, QueueConfig)
        raise QueueConfigError("\n".join(f"{path}: {problem}" for problem in problems)) from None
