"""The state writes of calls and conversations that Redis did not take (unreachable, or not
answering in time): contact memory is kept and written once Redis answers again; sessions,
retry records and held decisions are counted lost. One log line an outage says how many.

- Contact memory (first_seen, last_seen, the fields flows saved) is worth writing late: without
  it a returning customer is taken for a new one for a year. It is kept merged per contact, for
  up to MAX_KEPT_CONTACTS contacts a process; an update beyond that is counted lost.
- A session, a retry record or a held decision serves its call or conversation for seconds to
  minutes: by the time Redis answers again, Twilio's retry and the redirect after a hold prompt
  have come (answered without it), and a session written late could overwrite the one a later
  turn wrote meanwhile on another instance, or bring back a session that ended.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError, ResponseError

from ivr.metrics import STATE_WRITES_LOST, STATE_WRITES_RETRIED, labelled
from ivr.redis.autopipeline import AutoPipeline, Command, FailedSends

log = logging.getLogger("ivr.state_writes")

CONTACT_KEY = "ivr:contact:"  # a contact's memory, a hash (ivr.redis.conversations)
# Each other kind of state key, by its prefix (ivr.redis.conversations, ivr.redis.sessions).
_LOST_KINDS = (("ivr:session:", "session"), ("ivr:replay:", "retry_record"),
               ("ivr:held:", "held_decision"))
# About 500 bytes each (a number, two times, a few saved fields): 5 MB a process at most.
MAX_KEPT_CONTACTS = 10_000
RETRY_INTERVAL = 0.5  # how often Redis is asked whether it answers again
CONTACTS_A_BATCH = 1_000  # written again together: one round trip, well within its timeout

# Redis's answers that say "not now" rather than "never" (a replica during a failover, a Redis
# loading its data): the write is kept, as when Redis is unreachable.
_TRANSIENT_REFUSALS = ("READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
# A kept contact written late: first_seen unless it has one; the fields only if no visit newer
# than the kept writes was recorded meanwhile (by another instance, say), so a late write never
# puts older memory over newer. KEYS: the contact; ARGV: first_seen ('' for none), the TTL, when
# the kept writes were made (epoch seconds), then field, value pairs.
_REPLAY_SCRIPT = """
if ARGV[1] ~= '' then redis.call('HSETNX', KEYS[1], 'first_seen', ARGV[1]) end
local stored = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '')
if #ARGV > 3 and not (stored and stored > tonumber(ARGV[3])) then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_lost = labelled(STATE_WRITES_LOST)
_retried = labelled(STATE_WRITES_RETRIED)


def contact_commands(number: str, fields: dict[str, str], first_seen: str | None,
                     ttl_seconds: int) -> list[Command]:
    """The commands that write a contact's memory: `fields` (last_seen among them, for a
    visit), and `first_seen` unless the contact has one. Each is idempotent, and first_seen is
    HSETNX: no MULTI needed, and writing them again is harmless."""
    key = f"{CONTACT_KEY}{number}"
    commands: list[Command] = []
    if first_seen is not None:
        commands.append(("HSETNX", key, "first_seen", first_seen))
    if fields:
        commands.append(("HSET", key, *(item for pair in fields.items() for item in pair)))
    commands.append(("EXPIRE", key, ttl_seconds))
    return commands


@dataclass(slots=True)
class _KeptContact:
    """A contact's memory writes that Redis did not take, merged."""

    fields: dict[str, str] = field(default_factory=dict)
    first_seen: str | None = None
    made_at: int = 0  # when the newest of the writes was made, in epoch seconds

    def merge_older(self, older: _KeptContact) -> None:
        self.fields = {**older.fields, **self.fields}
        if older.first_seen is not None:
            self.first_seen = min(filter(None, (self.first_seen, older.first_seen)))
        self.made_at = max(self.made_at, older.made_at)

    def replay_command(self, number: str, ttl_seconds: int) -> Command:
        return ("EVAL", _REPLAY_SCRIPT, 1, f"{CONTACT_KEY}{number}", self.first_seen or "",
                ttl_seconds, self.made_at,
                *(item for pair in self.fields.items() for item in pair))


class StateWrites(FailedSends):
    """Writes a call's state through the auto-pipeline, waiting (`execute`) or not (`send`),
    and takes care of what Redis did not take."""

    def __init__(self, pipeline: AutoPipeline, contact_ttl_seconds: int,
                 max_kept: int | None = None) -> None:
        self.pipeline = pipeline
        self.contact_ttl_seconds = contact_ttl_seconds
        self.max_kept = MAX_KEPT_CONTACTS if max_kept is None else max_kept
        self._kept: dict[str, _KeptContact] = {}
        self._lost: collections.Counter[str] = collections.Counter()  # in this outage
        self._rewritten = 0  # contacts written again in this outage
        self._retrying: asyncio.Task[None] | None = None
        self._closed = False  # what fails from then on (the pipeline's last writes) is lost

    def send(self, *commands: Command) -> None:
        """Write without waiting: what reads it next queues behind it on the connection."""
        self.pipeline.send(*commands, what=self)

    async def execute(self, *commands: Command) -> bool:
        """Write and wait; False if Redis did not take it (then kept or counted lost)."""
        try:
            await self.pipeline.execute(*commands)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(commands, exc)
            return False
        return True

    def failed(self, commands: tuple[Command, ...], error: Exception) -> None:
        """Keep the contact memory among `commands`, and count the rest lost."""
        if (isinstance(error, ResponseError) and not is_transient(error)) or self._closed:
            if not self._closed:  # refused, not unreachable: a bug, never retried
                log.warning("state write refused by Redis: %s", error)
            for command in commands:
                self._count_lost(_kind(command))
            return
        for command in commands:
            kind = _kind(command)
            if kind == "contact":
                self._keep(command)
            else:
                self._count_lost(kind)
        if self._retrying is None:
            with contextlib.suppress(RuntimeError):  # no event loop left: nothing to retry on
                self._retrying = asyncio.get_running_loop().create_task(
                    self._write_kept_once_redis_answers())
                log.warning("Redis is not taking state writes (%s): contacts' memory is kept "
                            "to be written when it answers, sessions and retry records are "
                            "lost until then", type(error).__name__)

    async def close(self) -> None:
        """Write what is kept if Redis answers; what cannot be written is counted lost."""
        self._closed = True
        if self._retrying is not None:
            retrying, self._retrying = self._retrying, None
            retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retrying
            if self._kept and not self.pipeline.hung:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await self._write_kept()
        for _ in self._kept:
            self._count_lost("contact")
        self._kept.clear()
        if self._lost or self._rewritten:
            self._tell("stopping")

    # --- while Redis does not take them -----------------------------------------------------

    def _keep(self, command: Command) -> None:
        name, key = command[0], command[1]
        number = key[len(CONTACT_KEY):]
        kept = self._kept.get(number)
        if kept is None:
            if len(self._kept) >= self.max_kept:
                if name == "HSET":  # one a write; its HSETNX and EXPIRE go with it
                    self._count_lost("contact")
                return
            kept = self._kept[number] = _KeptContact()
        # It failed just now: a visit recorded after this by another instance is newer.
        kept.made_at = max(kept.made_at, int(time.time()))
        if name == "HSET":
            kept.fields.update(zip(command[2::2], command[3::2], strict=True))
        elif name == "HSETNX":
            kept.merge_older(_KeptContact(first_seen=command[3]))

    def _count_lost(self, kind: str | None) -> None:
        if kind is not None:
            self._lost[kind] += 1
            _lost(kind).inc()

    async def _write_kept_once_redis_answers(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL)
            try:
                await self.pipeline.execute(("PING",))
                await self._write_kept()
            except (RedisError, OSError, TimeoutError):
                continue
            break
        self._retrying = None
        self._tell("Redis answers again")

    async def _write_kept(self) -> None:
        """Write the kept contacts, a batch at a time; raises (the rest kept) if Redis does not
        take them."""
        while self._kept:
            numbers = list(self._kept)[:CONTACTS_A_BATCH]
            batch = {number: self._kept.pop(number) for number in numbers}
            try:
                results = await asyncio.gather(*(
                    self.pipeline.execute(kept.replay_command(number, self.contact_ttl_seconds))
                    for number, kept in batch.items()), return_exceptions=True)
            except asyncio.CancelledError:  # the process stops: kept, to be counted
                for number, kept in batch.items():
                    self._keep_again(number, kept)
                raise
            unwritten: Exception | None = None
            for (number, kept), result in zip(batch.items(), results, strict=True):
                if isinstance(result, ResponseError) and not is_transient(result):
                    self._count_lost("contact")
                elif isinstance(result, Exception):
                    unwritten = result
                    self._keep_again(number, kept)
                else:
                    self._rewritten += 1
                    _retried("contact").inc()
            if unwritten is not None:
                raise unwritten

    def _keep_again(self, number: str, kept: _KeptContact) -> None:
        """Keep what could not be written, under what came for the contact meanwhile."""
        newer = self._kept.setdefault(number, kept)
        if newer is not kept:
            newer.merge_older(kept)

    def _tell(self, when: str) -> None:
        """The outage's one line: what was written again, and what was lost."""
        lost = ", ".join(f"{count} {kind}" for kind, count in sorted(self._lost.items()))
        log.log(logging.WARNING if lost else logging.INFO,
                "%s: %d contacts' memory written again; state writes lost: %s "
                "(ivr_state_writes_lost_total)", when, self._rewritten, lost or "none")
        self._lost.clear()
        self._rewritten = 0


def _kind(command: Command) -> str | None:
    """What a state command writes: contact, session, retry_record, held_decision (None: not
    a state key)."""
    key = command[1] if len(command) > 1 else ""
    if not isinstance(key, str):
        return None
    if key.startswith(CONTACT_KEY):
        return "contact"
    return next((kind for prefix, kind in _LOST_KINDS if key.startswith(prefix)), None)


def is_transient(error: ResponseError) -> bool:
    """Whether Redis refused for now only (a failover, a load), not for good."""
    return str(error).startswith(_TRANSIENT_REFUSALS)
