"""Redis: the shared state of every instance. For now, the queue configuration.

Keys:
  ivr:queues          hash: queue name -> JSON record (the queue's fields, version, updated_*)
  ivr:queues:seeded   set once, when the queues file first seeded the store
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit
import redis.asyncio as redis

from ivr.queues import Queue, QueueConfig

log = logging.getLogger("ivr.store")

QUEUES_KEY = "ivr:queues"
SEEDED_KEY = "ivr:queues:seeded"
_RECORD_META = ("version", "updated_at", "updated_by")

# Seeding is one atomic step, so instances starting together cannot both seed, and no instance
# can read a half-seeded store.
_SEED_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], '1')
return 1
"""


def without_credentials(url: str) -> str:
    """A Redis URL fit for a log line."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=30,
        retry_on_timeout=True,
    )


class Store:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._seed = client.register_script(_SEED_SCRIPT)
        # The last configuration read, so calls still route while Redis is briefly unreachable.
        self._last_seen: dict[str, Queue] = {}

    async def close(self) -> None:
        await self.redis.aclose()

    async def seed_queues(self, config: QueueConfig) -> bool:
        """Write `config` into an empty store; return False (and write nothing) if it was seeded."""
        now = datetime.now(UTC).isoformat()
        args: list[str] = []
        for name, queue in config.queues.items():
            record = {**queue.model_dump(exclude_none=True), "version": 1, "updated_at": now,
                      "updated_by": "seed"}
            args += [name, json.dumps(record)]
        return bool(await self._seed(keys=[QUEUES_KEY, SEEDED_KEY], args=args))

    async def load_queues(self) -> dict[str, Queue]:
        """Every valid queue's live configuration (also kept as the last configuration seen)."""
        records = await self.redis.hgetall(QUEUES_KEY)
        queues = {}
        for name, raw in records.items():
            queue = _queue_from_record(name, raw)
            if queue is not None:
                queues[name] = queue
        self._last_seen = dict(queues)
        return queues

    async def get_queue(self, name: str, timeout: float) -> Queue | None:
        """The live configuration of queue `name`; the last one seen if Redis does not answer
        within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                raw = await self.redis.hget(QUEUES_KEY, name)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("store unreachable (%s); using the last configuration seen for %r",
                        type(exc).__name__, name)
            return self._last_seen.get(name)
        if raw is None:
            self._last_seen.pop(name, None)
            return None
        queue = _queue_from_record(name, raw)
        if queue is None:
            return self._last_seen.get(name)
        self._last_seen[name] = queue
        return queue


def _queue_from_record(name: str, raw: str) -> Queue | None:
    """The queue a stored record describes; None (and an error logged) for a corrupt record."""
    try:
        record = json.loads(raw)
        fields = {k: v for k, v in record.items() if k not in _RECORD_META}
        return Queue.model_validate(fields)
    except (ValueError, AttributeError) as exc:  # pydantic's ValidationError is a ValueError
        log.error("queue %r in the store is invalid and is ignored: %s", name, exc)
        return None
