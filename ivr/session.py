"""A session: what a call or a conversation keeps between its webhooks, and its JSON form. The
Redis commands that keep it are ivr.redis.sessions'; the turn (ivr.turn) and `ivr simulate`
need only this, and no Redis client.

A session is one JSON object. Its keys are those written since sessions were first kept (a
caller waiting at a question during a rolling upgrade is answered by the new code): flow,
memory, state, turn, twiml, waiting_at, routed_to, route_step, flow_version, and reroute_from
(written only when set, since issue 18). A key this code does not know
(a later version wrote it) is kept as it is and written back with the session, so that a call
moving between instances of two versions during a rolling upgrade keeps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ivr.jsonfast import compact_json

KNOWN_KEYS = frozenset(("flow", "memory", "state", "turn", "twiml", "waiting_at", "routed_to",
                        "route_step", "flow_version", "reroute_from"))


@dataclass(slots=True)
class Session:
    """A flow in progress for one contact: where it waits, what it knows, what it answered."""

    flow: str  # the flow's name
    memory: dict[str, str] = field(default_factory=dict)  # the contact memory read at its start
    state: dict[str, Any] = field(default_factory=dict)  # the run's state (ivr.flows.step.Run)
    turn: int = 0  # webhooks answered: a call's callback URLs carry it, to tell a retry
    twiml: str = ""  # the last answer, replayed when Twilio asks for a turn already answered
    waiting_at: str | None = None  # the step waiting for the contact's answer
    routed_to: str | None = None  # the queue it was handed to, kept after the route
    route_step: str | None = None  # the step that routed there, for a hand-off's note
    # The published flows version it started on, and finishes on (None: a session from before
    # versions, or a simulation: it runs on the flows at hand).
    flow_version: int | None = None
    later_keys: dict[str, Any] = field(default_factory=dict)  # keys a later version wrote
    # A conversation handed to a queue because a lookup failed: the step its route is decided
    # again from, at each message, until a lookup answers (None: the hand-off sticks).
    reroute_from: str | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> Session:
        """A session as stored; a key it lacks takes its default, a key it does not know is
        kept in `later_keys`."""
        stored = json.loads(text)
        return cls(stored.get("flow") or "", stored.get("memory") or {},
                   stored.get("state") or {}, stored.get("turn") or 0,
                   stored.get("twiml") or "", stored.get("waiting_at"),
                   stored.get("routed_to"), stored.get("route_step"),
                   _version(stored.get("flow_version")),
                   {} if stored.keys() <= KNOWN_KEYS
                   else {key: stored[key] for key in stored.keys() - KNOWN_KEYS},
                   stored.get("reroute_from"))

    def to_json(self) -> bytes:
        return compact_json({
            "flow": self.flow, "memory": self.memory, "state": self.state, "turn": self.turn,
            "twiml": self.twiml, "waiting_at": self.waiting_at, "routed_to": self.routed_to,
            "route_step": self.route_step, "flow_version": self.flow_version,
            # Only when set: the sessions of every other contact stay as they were.
            **({"reroute_from": self.reroute_from} if self.reroute_from else {}),
            **self.later_keys})


def _version(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
