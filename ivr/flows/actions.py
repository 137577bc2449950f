"""What a flow run asks a channel to do. Channel adapters turn these into TwiML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Say:
    """Speak `text` to the caller (voice) or send it to the customer (messaging)."""

    text: str
    language: str | None = None  # voice: the language to speak it in, e.g. es-ES


@dataclass(frozen=True, slots=True)
class RouteToQueue:
    """Hand the contact to a queue; `note` is what agents read on messaging hand-offs."""

    queue: str
    note: str


@dataclass(frozen=True, slots=True)
class Ask:
    """Put a question and wait for the answer: a <Gather> on voice, a message on messaging."""

    prompt: str
    dtmf: bool = True  # voice: accept keypad digits
    speech: bool = True  # voice: accept spoken answers
    max_digits: int | None = None  # voice: stop listening after this many digits
    timeout: int = 5  # voice: seconds of silence before the answer counts as empty
    language: str | None = None  # voice: the language spoken and recognised, e.g. es-ES


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call (voice); end the conversation quietly (messaging)."""


Action = Say | Ask | RouteToQueue | Hangup
