"""Redis state of calls and conversations in progress, besides their sessions
(ivr.redis.sessions): contact memory, the per-contact lock that keeps a contact's messages in
order, and answers to replay when Twilio retries a webhook.

Keys (per contact or call, so they spread over a Redis Cluster):
  ivr:contact:<number>        hash: first_seen, last_seen (epoch seconds; ISO 8601 text as
                              stored before issue 18, or by a CRM sync) and the fields flows saved
                              (written by ivr.redis.state_writes.contact_commands)
  ivr:lock:<channel key>      the per-contact messaging lock
  ivr:replay:<token>          the TwiML answered to an I-Twilio-Idempotency-Token
  ivr:held:<CallSid>          a held call's decision, for the redirect after the hold prompt
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import redis.asyncio as redis
from redis.exceptions import RedisError

from ivr.redis.autopipeline import AutoPipeline, Command
from ivr.redis.state_writes import StateWrites, contact_commands

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.conversations")

REPLAY_TTL = timedelta(minutes=15)  # Twilio retries within seconds; keep well beyond that
HELD_TTL = timedelta(minutes=2)  # a held call comes back for its decision within seconds
LOCK_TTL = timedelta(seconds=15)  # longer than any webhook may take; a crashed holder expires
# A second message waits this long for the first to be answered: with the routing deadline
# and the state writes, well under Twilio's 15 s, even with Redis hung.
LOCK_WAIT = 5.0
LOCK_CALL_TIMEOUT = 0.5  # one lock command; a hung Redis must not hold a message longer

# Visits, stored as epoch seconds and read as ISO 8601 times.
VISIT_FIELDS = ("first_seen", "last_seen")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Conversations:
    """Sessions, contact memory, replays and held decisions go through the auto-pipeline: a
    call's state costs it a share of a round trip, and never more than the pipeline's timeout;
    `writes` keeps or counts what Redis did not take. The lock, and waiting for a held
    decision, talk to Redis directly."""

    def __init__(self, client: redis.Redis, pipeline: AutoPipeline, contact_ttl: timedelta
                 ) -> None:
        self.redis = client
        self.pipeline = pipeline
        self.contact_ttl = contact_ttl
        self.writes = StateWrites(pipeline, ttl_seconds(contact_ttl))
        self._release = client.register_script(_RELEASE)

    # --- contact memory ---------------------------------------------------------------------

    async def contact_memory(self, number: str) -> dict[str, str]:
        """The contact's memory as flows read it: first_seen and last_seen as ISO 8601 times."""
        [flat] = await self.pipeline.execute(("HGETALL", f"ivr:contact:{number}"))
        memory = dict(zip(flat[::2], flat[1::2], strict=True))
        for name in VISIT_FIELDS:
            seen = memory.get(name)
            if seen is not None:
                memory[name] = visit_time(seen)
        return memory

    def remember_commands(self, number: str, fields: dict[str, str], visit: bool,
                          known: bool = False) -> list[Command]:
        """Save `fields`; with `visit`, also record that the contact came (last seen, and first
        seen unless the contact is `known` to have been seen before)."""
        if not fields and not visit:
            return []
        if not visit:
            return contact_commands(number, fields, None, ttl_seconds(self.contact_ttl))
        # Epoch seconds, which Redis keeps as an integer in the hash's compact encoding: 35
        # bytes a contact fewer than ISO text (bench/README.md, contact memory).
        now = str(int(time.time()))
        return contact_commands(number, {**fields, "last_seen": now}, None if known else now,
                                ttl_seconds(self.contact_ttl))

    # --- ordering and retries ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[bool]:
        """Hold the contact's lock while answering one message; yields False if it could not be
        had in time (the message is answered anyway: late is better than lost)."""
        token = secrets.token_hex(8)
        name = f"ivr:lock:{key}"
        # A Redis that left the pipeline's commands unanswered would hold the lock's too.
        if self.pipeline.hung or not await self._acquire(name, token):
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):  # it expires anyway
                async with asyncio.timeout(LOCK_CALL_TIMEOUT):
                    await self._release(keys=[name], args=[token])

    async def _acquire(self, name: str, token: str) -> bool:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + LOCK_WAIT
        delay = 0.005
        try:
            while True:
                async with asyncio.timeout(LOCK_CALL_TIMEOUT):
                    if await self.redis.set(name, token, nx=True, px=LOCK_TTL):
                        return True
                if loop.time() > give_up:
                    log.warning("a contact's messaging lock was not free after %.0f s; "
                                "answering anyway", LOCK_WAIT)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("messaging lock skipped: store unavailable (%s)", type(exc).__name__)
            return False

    async def hold_result(self, sid: str, twiml: str) -> None:
        await self.writes.execute(("SET", f"ivr:held:{sid}", twiml, "EX", ttl_seconds(HELD_TTL)))

    async def wait_for_hold_result(self, sid: str, timeout: float) -> str | None:
        """A held call's decision, made by whichever instance took the call, once it is there."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            twiml = await self.redis.getdel(f"ivr:held:{sid}")
            if twiml is not None or loop.time() > give_up:
                return twiml
            await asyncio.sleep(0.05)

    async def replay(self, token: str) -> str | None:
        [twiml] = await self.pipeline.execute(("GET", f"ivr:replay:{token}"))
        return twiml  # type: ignore[no-any-return]

    @staticmethod
    def record_reply_command(token: str, twiml: str) -> Command:
        return ("SET", f"ivr:replay:{token}", twiml, "EX", ttl_seconds(REPLAY_TTL), "NX")


def visit_time(stored: str) -> str:
    """A visit as flows read it: epoch seconds as an ISO 8601 time; anything else (the ISO text
    stored before, a CRM's own value) as it is."""
    if not stored.isdecimal():
        return stored
    try:
        # The text utc_iso writes for a whole second, without its cache of the current second,
        # which times long past would only evict.
        return datetime.fromtimestamp(int(stored), UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # beyond the years datetime can show
        return stored


@functools.lru_cache(maxsize=64)  # a few TTLs, on every call
def ttl_seconds(ttl: timedelta) -> int:
    return max(1, int(ttl.total_seconds()))
