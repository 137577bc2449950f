"""The Redis commands that keep sessions (ivr.session): a session is written under
`ivr:session:<channel key>` (a call's `voice:<CallSid>`, a conversation's
`messaging:<To>:<From>`) as its JSON form, expiring after its flow's `expire_after`.
"""

from __future__ import annotations

from datetime import timedelta

from ivr.redis.autopipeline import AutoPipeline, Command
from ivr.redis.conversations import ttl_seconds
from ivr.session import Session


class Sessions:
    """Sessions go through the auto-pipeline: loading or saving one costs a call a share of a
    round trip, and never more than the pipeline's timeout. They are saved and ended by
    ivr.redis.state_writes, with the contact memory, which counts what Redis did not take."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self.pipeline = pipeline

    async def load(self, key: str) -> Session | None:
        [raw] = await self.pipeline.execute(("GET", f"ivr:session:{key}"))
        return Session.from_json(raw) if raw else None

    @staticmethod
    def save_command(key: str, session: Session, ttl: timedelta) -> Command:
        return ("SET", f"ivr:session:{key}", session.to_json(), "EX", ttl_seconds(ttl))

    @staticmethod
    def end_command(key: str) -> Command:
        return ("DEL", f"ivr:session:{key}")
