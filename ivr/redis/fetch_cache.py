"""The fetch cache's shared answers in Redis (the engine's `SharedAnswers`, ivr.flows.upstream):
every instance reads what any of them fetched. Reads and writes go through the hot path's
auto-pipeline, sharing the round trips of the calls in flight; a write is not waited for.

Key:
  ivr:fetch:<flow>/<step>:<generation>:<SHA-256 of the request>
      string: JSON {"at": epoch seconds fetched, "outcome", "status", "document"}, expiring
      when the step's cache (and stale-while-revalidate) says; the engine names the keys,
      ivr.redis.fetch_cache_purges removes them
"""

from __future__ import annotations

import json

from redis.exceptions import RedisError

from ivr.flows.upstream import Answer, SharedAnswersUnavailable
from ivr.jsonfast import compact_json
from ivr.redis.autopipeline import AutoPipeline


class RedisSharedAnswers:
    """Fetch answers kept in Redis for every process and instance."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self.pipeline = pipeline

    async def read(self, key: str) -> tuple[float, Answer] | None:
        try:
            [raw] = await self.pipeline.execute(("GET", key))
        except (RedisError, OSError) as exc:  # OSError: TimeoutError, the pipeline's bound
            raise SharedAnswersUnavailable(type(exc).__name__) from exc
        if not raw:
            return None
        record = json.loads(raw)
        return record["at"], Answer(record["outcome"], record["status"], record["document"])

    def write(self, key: str, at: float, answer: Answer, keep_for: float) -> None:
        record = {"at": at, "outcome": answer.outcome, "status": answer.status,
                  "document": answer.document}
        self.pipeline.send(("SET", key, compact_json(record), "PX", max(1, int(keep_for * 1000))),
                           what="fetch cache write")
