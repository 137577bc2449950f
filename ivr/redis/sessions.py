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
