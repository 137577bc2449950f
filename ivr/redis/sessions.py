"""Sessions: what a call or a conversation keeps between its webhooks, its JSON form, and the
Redis commands that keep it.

A session is written under `ivr:session:<channel key>` (a call's `voice:<CallSid>`, a
conversation's `messaging:<To>:<From>`) as one JSON object, expiring after its flow's
`expire_after`. Its keys are those written since sessions were first kept (a caller waiting at a
question during a rolling upgrade is answered by the new code): flow, memory, state, turn, twiml,
waiting_at, routed_to, route_step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ivr.jsonfast import compact_json
from ivr.redis.autopipeline import AutoPipeline, Command
from ivr.redis.conversations import ttl_seconds


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

    @classmethod
    def from_json(cls, text: str | bytes) -> Session:
        """A session as stored; a key it lacks takes its default, a key it does not know is
        left (a later version may have written it)."""
        stored = json.loads(text)
        return cls(stored.get("flow") or "", stored.get("memory") or {},
                   stored.get("state") or {}, stored.get("turn") or 0,
                   stored.get("twiml") or "", stored.get("waiting_at"),
                   stored.get("routed_to"), stored.get("route_step"))

    def to_json(self) -> bytes:
        return compact_json({
            "flow": self.flow, "memory": self.memory, "state": self.state, "turn": self.turn,
            "twiml": self.twiml, "waiting_at": self.waiting_at, "routed_to": self.routed_to,
            "route_step": self.route_step})


class Sessions:
    """Sessions go through the auto-pipeline: loading or saving one costs a call a share of a
    round trip, and never more than the pipeline's timeout."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self.pipeline = pipeline

    async def load(self, key: str) -> Session | None:
        [raw] = await self.pipeline.execute(("GET", f"ivr:session:{key}"))
        return Session.from_json(raw) if raw else None

    async def save(self, key: str, session: Session, ttl: timedelta) -> None:
        await self.pipeline.execute(self.save_command(key, session, ttl))

    async def end(self, key: str) -> None:
        await self.pipeline.execute(self.end_command(key))

    @staticmethod
    def save_command(key: str, session: Session, ttl: timedelta) -> Command:
        return ("SET", f"ivr:session:{key}", session.to_json(), "EX", ttl_seconds(ttl))

    @staticmethod
    def end_command(key: str) -> Command:
        return ("DEL", f"ivr:session:{key}")
