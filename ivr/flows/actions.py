"""What a flow run asks a channel to do. Channel adapters turn these into TwiML, each with a
`match` that names every action (a new one a renderer forgets is a type error and a test failure);
`json_name` is how `ivr simulate --json` names it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Say:
    """Speak `text` to the caller (voice) or send it to the customer (messaging)."""

    json_name: ClassVar[str] = "say"

    text: str
    language: str | None = None  # voice: the language to speak it in, e.g. es-ES


@dataclass(frozen=True, slots=True)
class RouteToQueue:
    """Hand the contact to a queue; `note` is what agents read on messaging hand-offs."""

    json_name: ClassVar[str] = "route"

    queue: str
    note: str


@dataclass(frozen=True, slots=True)
class Ask:
    """Put a question and wait for the answer: a <Gather> on voice, a message on messaging."""

    json_name: ClassVar[str] = "ask"

    prompt: str
    dtmf: bool = True  # voice: accept keypad digits
    speech: bool = True  # voice: accept spoken answers
    max_digits: int | None = None  # voice: stop listening after this many digits
    timeout: int = 5  # voice: seconds of silence before the answer counts as empty
    language: str | None = None  # voice: the language spoken and recognised, e.g. es-ES


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call (voice); end the conversation quietly (messaging)."""

    json_name: ClassVar[str] = "hangup"


Action = Say | Ask | RouteToQueue | Hangup
