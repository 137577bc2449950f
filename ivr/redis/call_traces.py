"""Call traces in Redis: this process's writer of the traces it records (ivr.calltrace), and
the reader of every instance's, for `ivr calls tail`, `GET /admin/api/calls` and the admin
page's Calls.

Writing a trace never slows or breaks a call: `CallTraces.record` only queues the entry in memory;
one task per process writes what has queued up, at most every WRITE_INTERVAL, in one pipelined
round trip, and drops it (counted in ivr_call_traces_dropped_total) when Redis is unreachable.
The writes go through an auto-pipeline of their own (hiredis packs them, in C, on a connection
the calls' state does not wait behind): packing hundreds of entries a write through redis-py, in
Python, cost a noticeable share of a call's CPU (bench/README.md, "Why the code is written as
it is").

Key:
  ivr:calls   sorted set: JSON entry scored by the time it was answered (epoch seconds); entries
              older than IVR_TRACE_HOURS, and beyond the newest IVR_TRACE_MAX_ENTRIES, are removed
              at each write
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import secrets
import socket
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from ivr.calltrace import CallTrace
from ivr.jsonfast import compact_json
from ivr.metrics import CALL_TRACES_DROPPED
from ivr.redis.autopipeline import AutoPipeline

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.calltrace")

CALLS_KEY = "ivr:calls"
MAX_PENDING = 2000  # entries waiting for Redis, per process; beyond, the oldest are dropped
# Traces wait this long to be written together: under load, one round trip carries hundreds.
WRITE_INTERVAL = 0.1
WRITE_TIMEOUT = 2.0
RETRY_PAUSE = 1.0  # after a failed write, so an outage does not spin
READ_CHUNK = 500


class CallTraces:
    """This process's writer of call traces, and the reader of everyone's."""

    def __init__(self, client: redis.Redis, redis_url: str, max_entries: int, hours: float
                 ) -> None:
        self.redis = client  # reads
        self._writes = AutoPipeline(redis_url, timeout=WRITE_TIMEOUT)
        self.max_entries = max_entries
        self.ttl = max(1, round(hours * 3600))
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()
        # Entry ids: this process's random prefix and a count (a random id for each entry was a
        # system call on every call).
        self._id_prefix = secrets.token_hex(4)
        # Which process answered, among several instances and workers: host and process id.
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def start(self) -> None:
        if self.enabled:
            self._writer = asyncio.create_task(self._write_loop(), name="ivr-call-traces")

    async def close(self) -> None:
        """Stop writing, after one last try at what is still queued (a write cut short
        included)."""
        if self._writer is None:
            return
        self._closing = True
        self._writer.cancel()
        # Should the cancellation be lost (redis-py, which made the writes before, swallowed
        # some), the writer, back in its loop, sees `_closing` and returns.
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        if self._pending:
            await self._write_pending()
        await self._writes.close()

    def record(self, trace: CallTrace) -> None:
        """Queue `trace` for writing; never waits, never raises into the call."""
        if not self.enabled:
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            CALL_TRACES_DROPPED.inc()
        answered = trace.at + trace.duration_ms / 1000
        entry_id = f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFF:08x}"
        self._pending.append((answered, compact_json(trace.entry(entry_id, self.instance))))
        if not self._wake.is_set():
            self._wake.set()

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            await asyncio.sleep(WRITE_INTERVAL)
            self._wake.clear()
            if not await self._write_pending() and not self._closing:
                await asyncio.sleep(RETRY_PAUSE)

    async def _write_pending(self) -> bool:
        queued = list(self._pending)
        self._pending.clear()
        if not queued:
            return True
        now = time.time()
        try:
            # At most WRITE_TIMEOUT: the auto-pipeline's bound.
            await self._writes.execute(
                ("ZADD", CALLS_KEY, *itertools.chain.from_iterable(queued)),
                ("ZREMRANGEBYSCORE", CALLS_KEY, "-inf", f"({now - self.ttl}"),
                ("ZREMRANGEBYRANK", CALLS_KEY, 0, -self.max_entries - 1),
                ("EXPIRE", CALLS_KEY, self.ttl))
        except asyncio.CancelledError:  # closing: close()'s last try writes them (ZADD again
            self._pending.extendleft(reversed(queued))  # is harmless if they got there)
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            CALL_TRACES_DROPPED.inc(len(queued))
            if not self._failing:
                log.warning("call traces not stored: store unavailable (%s); retrying",
                            type(exc).__name__)
            self._failing = True
            return False
        except Exception:  # a trace must never take the writer down with it
            CALL_TRACES_DROPPED.inc(len(queued))
            log.exception("call traces not stored")
            return True
        if self._failing:
            log.info("call traces stored again")
            self._failing = False
        return True

    async def recent(self, limit: int, sid: str | None = None,
                     after: float | None = None) -> list[dict[str, Any]]:
        """Up to `limit` traces, newest first: of one `sid` if given, answered after the epoch
        time `after` if given, none older than the retention."""
        oldest = max(time.time() - self.ttl, after or 0)
        needle = f'"sid":{json.dumps(sid)},' if sid else None
        found: list[dict[str, Any]] = []
        offset = 0
        while len(found) < limit:
            count = limit if needle is None else READ_CHUNK
            chunk = await self.redis.zrevrangebyscore(
                CALLS_KEY, "+inf", f"({oldest}", start=offset, num=count, withscores=True)
            for raw, score in chunk:
                if needle is None or needle in raw:
                    found.append({**json.loads(raw), "answered": score})
            if len(chunk) < count:
                break
            offset += count
        return found[:limit]
