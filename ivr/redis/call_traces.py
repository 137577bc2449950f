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

Keys (those beside ivr:calls are hash-tagged with its name, so all are in its Cluster slot and
one script writes them together):
  ivr:calls                    sorted set: JSON entry scored by the time it was answered (epoch
                               seconds); entries older than IVR_TRACE_HOURS, and beyond the newest
                               IVR_TRACE_MAX_ENTRIES, are removed at each write
  {ivr:calls}:sids             hash: SID -> where its entries are in ivr:calls, "id@score" each,
                               space-separated; a reference goes when its entry does, in the same
                               script, so looking a call up by SID reads its own entries only
  {ivr:calls}:indexed-from     when traces were first written with their SID indexed (0: no trace
                               was stored before): older ones, by a previous version, are found
                               by SID by reading them all, as before
  {ivr:calls}:sweep            where the sweep of references left by a previous version is
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import json
import logging
import os
import secrets
import socket
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from ivr.calltrace import CallTrace, is_sid
from ivr.jsonfast import compact_json
from ivr.metrics import CALL_TRACES_DROPPED
from ivr.redis.autopipeline import AutoPipeline

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.calltrace")

CALLS_KEY = "ivr:calls"
SIDS_KEY = "{ivr:calls}:sids"
INDEXED_FROM_KEY = "{ivr:calls}:indexed-from"
SWEEP_KEY = "{ivr:calls}:sweep"
MAX_PENDING = 2000  # entries waiting for Redis, per process; beyond, the oldest are dropped
# Traces wait this long to be written together: under load, one round trip carries hundreds.
WRITE_INTERVAL = 0.1
WRITE_TIMEOUT = 2.0
RETRY_PAUSE = 1.0  # after a failed write, so an outage does not spin
READ_CHUNK = 500
# Traces a previous version writes later than this after this version's first write are listed
# but not found by SID: a rolling upgrade is taken to be over by then.
UPGRADE_WINDOW = 3600.0
# SIDs whose references the sweep checks at each write: a reference can outlive its entry only
# when a previous version's writer trimmed it, during a rolling upgrade.
SWEEP_COUNT = 20

# Shared by both scripts. KEYS[1] ivr:calls, KEYS[2] the SID index.
_REFERENCES = r"""
local calls, sids = KEYS[1], KEYS[2]

-- The references among `refs` ("id@score ...") whose entries are in ivr:calls, those entries
-- (each followed by its score), and how many references `refs` holds.
local function resolve(refs)
  local kept, found, total = {}, {}, 0
  for ref in string.gmatch(refs, '%S+') do
    total = total + 1
    local id, score = string.match(ref, '^([^@]+)@(.+)$')
    local head = '{"id":"' .. id .. '"'
    for _, entry in ipairs(redis.call('ZRANGEBYSCORE', calls, score, score)) do
      if string.sub(entry, 1, #head) == head then
        kept[#kept + 1] = ref
        found[#found + 1] = entry
        found[#found + 1] = score
        break
      end
    end
  end
  return kept, found, total
end

local function keep(sid, kept)
  if #kept == 0 then
    redis.call('HDEL', sids, sid)
  else
    redis.call('HSET', sids, sid, table.concat(kept, ' '))
  end
end
"""

# KEYS[3] indexed-from, KEYS[4] the sweep's cursor. ARGV: the cutoff (entries answered before it
# go), how many entries are kept, the TTL, now, how many SIDs the sweep checks, how many entries
# are written, then score and entry of each, then each SID indexed and its new references.
_WRITE = _REFERENCES + r"""
-- Drops the references of `entries`, which are leaving ivr:calls.
local function forget(entries)
  for _, entry in ipairs(entries) do
    local id = string.match(entry, '^{"id":"([^"]*)"')
    local at = string.find(entry, '"sid":"', 1, true)
    -- An indexed SID is letters and digits: nothing in it is escaped.
    local sid = at and string.match(entry, '^"sid":"([^"\\]*)"', at)
    local refs = id and sid and redis.call('HGET', sids, sid)
    if refs then
      local kept, prefix = {}, id .. '@'
      for ref in string.gmatch(refs, '%S+') do
        if string.sub(ref, 1, #prefix) ~= prefix then kept[#kept + 1] = ref end
      end
      keep(sid, kept)
    end
  end
end

local cutoff, limit, ttl = '(' .. ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- References left by a previous version's writer (before this write's own, which are good).
local swept = redis.call('HSCAN', sids, redis.call('GET', KEYS[4]) or '0', 'COUNT', ARGV[5])
redis.call('SET', KEYS[4], swept[1])
for i = 1, #swept[2], 2 do
  local kept, _, total = resolve(swept[2][i + 1])
  if #kept ~= total then keep(swept[2][i], kept) end
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], redis.call('EXISTS', calls) == 1 and ARGV[4] or '0')
end
local written = 6 + 2 * tonumber(ARGV[6])
if written > 6 then redis.call('ZADD', calls, unpack(ARGV, 7, written)) end
for i = written + 1, #ARGV, 2 do
  local refs = redis.call('HGET', sids, ARGV[i]) or ''
  local known, kept = ' ' .. refs .. ' ', {}
  if refs ~= '' then kept[1] = refs end
  for ref in string.gmatch(ARGV[i + 1], '%S+') do
    -- An entry written again (after a write cut short) keeps its one reference.
    if not string.find(known, ' ' .. ref .. ' ', 1, true) then kept[#kept + 1] = ref end
  end
  redis.call('HSET', sids, ARGV[i], table.concat(kept, ' '))
end
forget(redis.call('ZRANGEBYSCORE', calls, '-inf', cutoff))
redis.call('ZREMRANGEBYSCORE', calls, '-inf', cutoff)
local extra = redis.call('ZCARD', calls) - limit
if extra > 0 then
  forget(redis.call('ZRANGE', calls, 0, extra - 1))
  redis.call('ZREMRANGEBYRANK', calls, 0, extra - 1)
end
redis.call('EXPIRE', calls, ttl)
redis.call('EXPIRE', sids, ttl)
"""

# ARGV[1] the SID. Its entries, each followed by its score; nil when the SID is not indexed.
# References whose entries are gone (a previous version trimmed them) go on the way.
_READ = _REFERENCES + r"""
local refs = redis.call('HGET', sids, ARGV[1])
if not refs then return nil end
local kept, found, total = resolve(refs)
if #kept ~= total then keep(ARGV[1], kept) end
return found
"""
_WRITE_SHA = hashlib.sha1(_WRITE.encode()).hexdigest()


class CallTraces:
    """This process's writer of call traces, and the reader of everyone's."""

    def __init__(self, client: redis.Redis, redis_url: str, max_entries: int, hours: float
                 ) -> None:
        self.redis = client  # reads
        self._read_sid = client.register_script(_READ)
        self._writes = AutoPipeline(redis_url, timeout=WRITE_TIMEOUT)
        self.max_entries = max_entries
        self.ttl = max(1, round(hours * 3600))
        # Each trace as the write script takes it: score, entry, SID indexed ('' for none), id.
        self._pending: collections.deque[tuple[str, bytes, str, str]] = collections.deque()
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
        indexed = trace.sid if trace.sid and is_sid(trace.sid) else ""
        self._pending.append((repr(answered), compact_json(trace.entry(entry_id, self.instance)),
                              indexed, entry_id))
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
            await self._write(now, queued)
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

    async def _write(self, now: float, queued: list[tuple[str, bytes, str, str]]) -> None:
        """Add `queued` to the traces and their SIDs to the index, and trim both, at once."""
        keys = (CALLS_KEY, SIDS_KEY, INDEXED_FROM_KEY, SWEEP_KEY)
        # A SID's references together: one read and one write of the index each.
        references: dict[str, list[str]] = {}
        for score, _, sid, entry_id in queued:
            if sid:
                references.setdefault(sid, []).append(f"{entry_id}@{score}")
        args = (now - self.ttl, self.max_entries, self.ttl, now, SWEEP_COUNT, len(queued),
                *itertools.chain.from_iterable(entry[:2] for entry in queued),
                *itertools.chain.from_iterable(
                    (sid, " ".join(refs)) for sid, refs in references.items()))
        try:
            await self._writes.execute(("EVALSHA", _WRITE_SHA, len(keys), *keys, *args))
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # Redis restarted since (or another process never sent it): once, in full.
            await self._writes.execute(("EVAL", _WRITE, len(keys), *keys, *args))

    async def recent(self, limit: int, sid: str | None = None,
                     after: float | None = None) -> list[dict[str, Any]]:
        """Up to `limit` traces, newest first: of one `sid` if given, answered after the epoch
        time `after` if given, none older than the retention."""
        oldest = max(time.time() - self.ttl, after or 0)
        if sid:
            return await self._of_sid(sid, limit, oldest)
        chunk = await self.redis.zrevrangebyscore(
            CALLS_KEY, "+inf", f"({oldest}", start=0, num=limit, withscores=True)
        return [{**json.loads(raw), "answered": score} for raw, score in chunk]

    async def _of_sid(self, sid: str, limit: int, oldest: float) -> list[dict[str, Any]]:
        """The traces of `sid` answered after `oldest`, newest first: those the index names,
        or, when it names none, those a previous version wrote (read through)."""
        found = await self._read_sid(keys=(CALLS_KEY, SIDS_KEY), args=(sid,))
        if found is None:
            pairs = await self._unindexed(sid, limit, oldest)
        else:
            pairs = [(raw, float(score)) for raw, score in zip(found[::2], found[1::2])]
        pairs = sorted((pair for pair in pairs if pair[1] > oldest), key=lambda pair: -pair[1])
        return [{**json.loads(raw), "answered": score} for raw, score in pairs[:limit]]

    async def _unindexed(self, sid: str, limit: int, oldest: float) -> list[tuple[str, float]]:
        """Up to `limit` traces of `sid`, newest first, among those a previous version may have
        written (before this version's first write, or in a rolling upgrade's UPGRADE_WINDOW
        after it), by reading them: nothing to read once those are past the retention."""
        indexed_from = await self.redis.get(INDEXED_FROM_KEY)
        newest: float | str = "+inf"
        if indexed_from is not None:
            newest = float(indexed_from) + UPGRADE_WINDOW
            if newest <= oldest:
                return []
        needle = f'"sid":{json.dumps(sid)},'
        found: list[tuple[str, float]] = []
        offset = 0
        while True:
            chunk = await self.redis.zrevrangebyscore(
                CALLS_KEY, newest, f"({oldest}", start=offset, num=READ_CHUNK, withscores=True)
            found.extend((raw, score) for raw, score in chunk if needle in raw)
            if len(chunk) < READ_CHUNK or len(found) >= limit:
                return found
            offset += READ_CHUNK
