"""Purges of the fetch cache: an admin removes one caller's cached answers of a fetch step, or
all of the step's, in Redis and in the copy every process keeps in memory (ivr.flows.upstream).

A purge of one caller unlinks the caller's keys; a purge of a whole step makes the step's
generation, which its keys carry, the next one (no key is scanned for: the old answers are never
read again and expire from Redis by themselves). Either way the purge is published, and every
process (instances and workers alike) drops its copies, through the listener that keeps the
queue configuration fresh (ivr.redis.queue_store): within the same bound as a queue change. A
process that missed a purge (its connection to Redis broke) sees the purge counter differ and
drops every copy it keeps. The answers themselves are ivr.redis.fetch_cache's keys.

Keys (the queue configuration's hash tag, so that the script's keys share one Cluster slot):
  {ivr}:fetch:generations   hash: flow/step -> the generation of the step's cache (absent: 0)
  {ivr}:fetch:purges        counter: purges ever made
Channel:
  {ivr}:fetch:purged        JSON of each purge: {"purge", "generation", "scope", "keys"}
The audit entry goes to the queue changes' audit log ({ivr}:audit), action `purge`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis.asyncio as redis

from ivr.flows.upstream import Upstreams
from ivr.redis.queue_store import AUDIT_KEY
from ivr.redis.retention import TRIM_LUA, Retention

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.fetchcache")

GENERATIONS_KEY = "{ivr}:fetch:generations"
PURGES_KEY = "{ivr}:fetch:purges"
PURGED_CHANNEL = "{ivr}:fetch:purged"

# The purge's record, its audit entry and its announcement as one atomic step, so that a process
# that sees the counter has also been sent the message. KEYS: generations, purges, audit.
# ARGV: scope, '1' for the whole step, message JSON without purge and generation, audit entry
# JSON, channel, audit entries kept, the age cutoff ('' = none) (Retention). Returns {purge
# number, generation}.
_PURGE_SCRIPT = TRIM_LUA + """
local generation = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local entry = ARGV[4]
if ARGV[2] == '1' then
  generation = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  entry = '{"generation":' .. generation .. ',' .. string.sub(entry, 2)
end
local purge = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], entry)
trim_audit(KEYS[3], tonumber(ARGV[6]), ARGV[7])
redis.call('PUBLISH', ARGV[5],
  '{"purge":' .. purge .. ',"generation":' .. generation .. ',' .. string.sub(ARGV[3], 2))
return {purge, generation}
"""


class FetchCachePurges:
    """Purging, and applying every purge to this process's `upstreams`. The store's listener
    calls `resync` and `changed` (see ivr.redis.queue_store.Follower)."""

    channel = PURGED_CHANNEL
    version_key = PURGES_KEY

    def __init__(self, client: redis.Redis, upstreams: Upstreams,
                 retention: Retention | None = None) -> None:
        self.redis = client
        self.upstreams = upstreams
        self.retention = retention or Retention()
        self._purge = client.register_script(_PURGE_SCRIPT)
        self._applied: int | None = None  # the last purge this process applied, by number

    @property
    def version(self) -> str | None:
        """The purge counter as this process last saw it, as Redis holds it (None: no purge
        yet, or never synced)."""
        return str(self._applied) if self._applied else None

    # --- following purges (the store's listener) ------------------------------------------

    async def resync(self) -> None:
        """Take every step's generation from Redis; after purges this process missed, drop
        every answer it keeps (a missed purge of one caller cannot be told apart)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(GENERATIONS_KEY).get(PURGES_KEY)
            generations, purges = await pipe.execute()
        self.upstreams.set_generations({scope: int(g) for scope, g in generations.items()})
        count = int(purges or 0)
        if self._applied is not None and count != self._applied:
            log.info("fetch cache: purges were made while this process was not following; "
                     "answers kept in memory dropped")
            self.upstreams.forget_everything()
        self._applied = count

    async def changed(self, data: str) -> None:
        """A purge was published: apply it, or resync if one before it was missed."""
        try:
            purge = json.loads(data)
            number = int(purge["purge"])
        except (ValueError, TypeError, KeyError):
            log.warning("fetch cache: unreadable purge message ignored; resyncing")
            await self.resync()
            return
        if self._applied is None or number > self._applied + 1:
            await self.resync()
        elif number == self._applied + 1:
            self._apply(purge)
            self._applied = number
        # else: known already (a resync counted it)

    def _apply(self, purge: dict[str, Any]) -> None:
        if purge.get("keys") is None:
            self.upstreams.set_generation(purge["scope"], int(purge["generation"]))
        else:
            self.upstreams.forget(purge["keys"])

    # --- purging (the admin API) ----------------------------------------------------------

    async def sync_generation(self, scope: str) -> None:
        """Take the step's generation from Redis now: a purge of the whole step made by
        another instance a moment ago may not have reached this process yet, and a caller's
        keys must be those of the current generation."""
        generation = await self.redis.hget(GENERATIONS_KEY, scope)
        self.upstreams.set_generation(scope, int(generation or 0))

    async def purge_keys(self, scope: str, keys: list[str], entry: dict[str, Any]) -> int:
        """Remove these keys of one step (a caller's) from Redis, then from every process;
        how many Redis had."""
        # Unlinked before every process drops its copy: a process that reads Redis meanwhile
        # finds nothing, never the old answer to keep again.
        removed = int(await self.redis.unlink(*keys)) if keys else 0
        await self._announce(scope, keys, {**entry, "removed": removed})
        self.upstreams.forget(keys)  # this process at once; the others by pub/sub
        return removed

    async def purge_step(self, scope: str, entry: dict[str, Any]) -> int:
        """Move the step's cache to its next generation everywhere; the new generation."""
        generation = await self._announce(scope, None, entry)
        self.upstreams.set_generation(scope, generation)
        return generation

    async def _announce(self, scope: str, keys: list[str] | None, entry: dict[str, Any]) -> int:
        message = json.dumps({"scope": scope, "keys": keys})
        _, generation = await self._purge(
            keys=[GENERATIONS_KEY, PURGES_KEY, AUDIT_KEY],
            args=[scope, "1" if keys is None else "0", message, json.dumps(entry),
                  PURGED_CHANNEL, str(self.retention.audit_entries), self.retention.cutoff()])
        return int(generation)
