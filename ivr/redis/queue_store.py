"""The queue store: the queue configuration every instance shares (live records, every version of
each, the audit log) and a per-process cache kept fresh by pub/sub. The same listener keeps other
shared state fresh in every process (`Follower`: the fetch cache's purges).

Keys (one hash tag, so every script's keys live in one Redis Cluster slot):
  {ivr}:queues                 hash: queue name -> JSON record (fields, version, updated_*)
  {ivr}:queues:seeded          set once, when the queues file first seeded the store
  {ivr}:queues:version         counter, bumped by every change (cache invalidation)
  {ivr}:queue:<name>:history   hash: version -> JSON record, the newest versions (consecutive
                               numbers up to the counter; older ones trimmed, see Retention)
  {ivr}:queue:<name>:counter   the queue's last version number (kept across deletes)
  {ivr}:audit                  list, newest first: JSON entries of admin changes (trimmed)
Channel:
  {ivr}:queues:changed         `<config version> <queue name>` after every change to that queue
                               (a bare version, as older releases publish: reload every queue)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import BusyLoadingError, RedisError, ResponseError

from ivr.metrics import STORE_UP
from ivr.queues import (
    Queue,
    QueueConfig,
    changed_fields,
    check_overflow_from,
    queue_matches,
)
from ivr.redis.retention import (
    TRIM_LUA,
    Retention,
    kept_versions,
    next_before,
    page_numbers,
)

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.store")

QUEUES_KEY = "{ivr}:queues"
SEEDED_KEY = "{ivr}:queues:seeded"
CONFIG_VERSION_KEY = "{ivr}:queues:version"
AUDIT_KEY = "{ivr}:audit"
CHANGED_CHANNEL = "{ivr}:queues:changed"
# The fields of a queue record that the store sets, besides the queue's own.
RECORD_META = ("version", "updated_at", "updated_by")
# If-Match, as the write script takes it: a version number, or one of these.
MUST_EXIST = "*"
MUST_NOT_EXIST = "0"  # the version of a queue that does not exist
NEVER_MATCHES = "-1"  # no version is -1: for a precondition that can never hold
# How often a process double-checks the config version, in case a pub/sub message was lost.
RECHECK_INTERVAL = 5.0
# Optimistic writes retry when another queue changed between validation and write.
MAX_WRITE_ATTEMPTS = 20


def history_key(name: str) -> str:
    return f"{{ivr}}:queue:{name}:history"


def counter_key(name: str) -> str:
    return f"{{ivr}}:queue:{name}:counter"


# Seeding is one atomic step, so instances starting together cannot both seed, and no instance
# can read a half-seeded store. KEYS: queues, seeded, config version, then per queue its history
# and counter keys; ARGV: name, record pairs.
_SEED_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 1, #ARGV, 2 do
  local k = 3 + i
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[k], '1', ARGV[i + 1])
  redis.call('SET', KEYS[k + 1], '1')
end
redis.call('SET', KEYS[2], '1')
redis.call('INCR', KEYS[3])
return 1
"""

# A write (create, update, rollback, delete) as one atomic step. The record and audit entry are
# JSON built in Python; the script only splices in the version, so JSON arrays survive intact.
# A record whose queue fields equal the current record's writes nothing: no version, no audit
# entry, no message. Compared here, on the record current at the write, so writers racing to
# set the same values make one version, never one each.
# KEYS: queues, history, counter, audit, config version; for a delete, the key of what routes
#       to queues (QueueUsers.key).
# ARGV: name, record JSON without version ('' to delete), expected queue version ('' = any,
#       '*' = must exist), expected config version ('' = any), audit entry JSON, channel; for a
#       delete, the value at KEYS[6] that the queue's users were read at (else ''); versions
#       kept, audit entries kept, the age cutoff ('' = none) (Retention).
# Returns {status, version, the record replaced or '', and for ok the new config version}: ok,
# unchanged (nothing written), stale (If-Match failed), retry (config or the queues' users
# changed), missing.
_WRITE_SCRIPT = "local META = {" + ", ".join(f"'{key}'" for key in RECORD_META) + "}\n" + \
    TRIM_LUA + """
local function same(a, b)
  if type(a) ~= 'table' or type(b) ~= 'table' then return a == b end
  for key, value in pairs(a) do if not same(value, b[key]) then return false end end
  for key in pairs(b) do if a[key] == nil then return false end end
  return true
end
-- The queue's own fields of a record (nil for a corrupt one, which a write always replaces).
local function fields(record)
  local ok, decoded = pcall(cjson.decode, record)
  if not ok or type(decoded) ~= 'table' or not tonumber(decoded.version or 0) then return nil end
  for _, key in ipairs(META) do decoded[key] = nil end
  return decoded
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local current_version = 0
-- The counter, not the record, says the version: a corrupt record can still be replaced.
if current then current_version = tonumber(redis.call('GET', KEYS[3]) or '0') or 0 end
if ARGV[3] == '*' then
  if not current then return {'missing', 0, ''} end
elseif ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current_version then
  return {'stale', current_version, ''}
end
if current and ARGV[2] ~= '' then
  local now = fields(current)
  if now and same(now, fields(ARGV[2])) then return {'unchanged', current_version, current} end
end
if ARGV[4] ~= '' and ARGV[4] ~= (redis.call('GET', KEYS[5]) or '0') then
  return {'retry', current_version, ''}
end
if KEYS[6] and ARGV[7] ~= (redis.call('GET', KEYS[6]) or '0') then
  return {'retry', current_version, ''}
end
local old = 'null'
if current and pcall(cjson.decode, current) then old = current end
local new = 'null'
local version = current_version
if ARGV[2] == '' then
  if not current then return {'missing', 0, ''} end
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  version = redis.call('INCR', KEYS[3])
  new = '{"version":' .. version .. ',' .. string.sub(ARGV[2], 2)
  redis.call('HSET', KEYS[1], ARGV[1], new)
  redis.call('HSET', KEYS[2], version, new)
  trim_versions(KEYS[2], '', version, tonumber(ARGV[8]), 1, ARGV[10], 'updated_at')
end
redis.call('LPUSH', KEYS[4],
  '{"version":' .. version .. ',"old":' .. old .. ',"new":' .. new .. ',' .. string.sub(ARGV[5], 2))
trim_audit(KEYS[4], tonumber(ARGV[9]), ARGV[10])
local config_version = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[6], config_version .. ' ' .. ARGV[1])
return {'ok', version, current or '', config_version}
"""


@dataclass(frozen=True)
class QueueRecord:
    """One version of a queue's configuration, with who wrote it and when."""

    name: str
    queue: Queue
    version: int
    updated_at: str
    updated_by: str

    @classmethod
    def from_json(cls, name: str, raw: str) -> QueueRecord:
        """Raises ValueError (pydantic's ValidationError included) for a corrupt record."""
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("a queue record must be a JSON object")
        fields = {k: v for k, v in record.items() if k not in RECORD_META}
        try:
            version = int(record.get("version", 0))
        except (TypeError, ValueError):
            raise ValueError(f"bad version {record.get('version')!r}") from None
        return cls(
            name=name,
            queue=Queue.model_validate(fields),
            version=version,
            updated_at=str(record.get("updated_at", "")),
            updated_by=str(record.get("updated_by", "")),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.queue.model_dump(mode="json"),
            "version": self.version,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True)
class Written:
    """What a write left: the record now current, and the queue it replaced (None: there was
    none, or it was corrupt). A write equal to the current content writes nothing: `record` is
    then the current record, unchanged."""

    record: QueueRecord
    previous: Queue | None

    @property
    def created(self) -> bool:
        return self.previous is None

    @property
    def changed(self) -> list[str]:
        """The fields the write changed, in the model's order (none: nothing was written)."""
        return changed_fields(self.previous, self.record.queue)


@dataclass(frozen=True)
class HistoryPage:
    """One page of a queue's history, newest first: `versions`; `below`, the version just
    below the page (what its last version changed from; None when there is none or it is no
    longer kept); `next_before`, what `before` gets the next page (None: this is the last);
    `oldest`, the oldest version kept (0: the queue never had one)."""

    versions: list[QueueRecord]
    below: QueueRecord | None
    next_before: int | None
    oldest: int


class Follower(Protocol):
    """Shared state a process keeps a copy of, kept fresh by the store's listener: a message on
    `channel` is handed to `changed`; after a reconnection, or when `version_key` in Redis
    differs from `version` (a message was lost), `resync` reads it all again."""

    channel: str
    version_key: str

    @property
    def version(self) -> str | None: ...

    async def resync(self) -> None: ...

    async def changed(self, data: str) -> None: ...


class QueueUsers(Protocol):
    """What routes calls to queues, kept in Redis apart from them (the live flows version): a
    queue's delete reads it, and is written only while the value at `key` (one of `{ivr}`'s
    keys) is still the one it was read at, so a change landing meanwhile makes it check again."""

    key: str

    async def users(self) -> tuple[str, dict[str, str]]:
        """The value at `key` now ('0' when unset), and queue name -> what routes to it, in
        words (`flows version 3 (flow a, flow b)`). Raises QueueInUse when that cannot be
        known."""
        ...


class QueueNotFound(Exception):
    pass


class VersionNotKept(QueueNotFound):
    """The version asked for was trimmed by the retention settings (or never was)."""


class StaleVersion(Exception):
    """If-Match named a version that is no longer current."""

    def __init__(self, current_version: int) -> None:
        super().__init__(f"the current version is {current_version}")
        self.current_version = current_version


class QueueInUse(Exception):
    """The queue cannot be deleted; the message says what uses it."""


class Busy(Exception):
    """Other changes kept winning the race; the caller should try again."""


class InvalidChange(ValueError):
    """The change would make the configuration invalid (e.g. an overflow to nowhere)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _record_json(queue: Queue, who: str, at: str) -> str:
    return json.dumps({**queue.model_dump(mode="json"), "updated_at": at, "updated_by": who})


class QueueStore:
    """Queue configuration in Redis. `queue()` answers from a local cache that pub/sub keeps
    fresh, so routing a call costs no Redis round trip and survives a Redis outage."""

    def __init__(self, client: redis.Redis, retention: Retention | None = None) -> None:
        self.redis = client
        self.retention = retention or Retention()
        self._seed = client.register_script(_SEED_SCRIPT)
        self._write = client.register_script(_WRITE_SCRIPT)
        self._queues: dict[str, Queue] = {}
        self._loaded = False
        self._config_version: str | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._following = False
        self._followers: dict[str, Follower] = {}  # by channel

    # --- life cycle -------------------------------------------------------------------------

    def follow(self, follower: Follower) -> None:
        """Keep `follower` fresh too, from start() on."""
        self._followers[follower.channel] = follower

    async def start(self) -> None:
        """Load the configuration (unless already loaded) and what the followers keep, then
        keep them fresh in the background."""
        # The listener reloads once subscribed anyway; this load is only so that `queue()`
        # answers as soon as start() returns, and start-up has usually done it already.
        if not self._loaded:
            await self.refresh()
        for follower in self._followers.values():
            await follower.resync()
        self._set_following(True)
        self._listener = asyncio.create_task(self._listen(), name="ivr-queue-invalidation")

    async def close(self) -> None:
        # redis-py can swallow a cancellation that lands during one of its commands (the
        # listener's refresh, say): the listener also stops on `_closing`. Without it, close(),
        # and a server's shutdown with it, waited forever when it came during a refresh.
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.redis.aclose()
        # Behind Sentinel, the clients that ask the sentinels are the pool's, not the client's.
        manager = getattr(self.redis.connection_pool, "sentinel_manager", None)
        for client in getattr(manager, "sentinels", ()):
            await client.aclose()

    async def seed_queues(self, config: QueueConfig) -> bool:
        """Write `config` into an empty store; return False (and write nothing) if it was seeded."""
        at = _now()
        keys = [QUEUES_KEY, SEEDED_KEY, CONFIG_VERSION_KEY]
        args: list[str] = []
        for name, queue in config.queues.items():
            keys += [history_key(name), counter_key(name)]
            args += [name, '{"version":1,' + _record_json(queue, "seed", at)[1:]]
        return bool(await self._seed(keys=keys, args=args))

    # --- the hot path: no I/O ---------------------------------------------------------------

    def queue(self, name: str) -> Queue | None:
        return self._queues.get(name)

    def queue_names(self) -> set[str]:
        return set(self._queues)

    async def live_names(self) -> tuple[set[str], str]:
        """The names of the queues in Redis now, and the config version they are at (what a
        check against the live queues is guarded by): this process's, when at the live version."""
        queues, version = await self._cached_at_live_version()
        return set(queues), version

    # --- health -----------------------------------------------------------------------------

    @property
    def following(self) -> bool:
        """Whether this process is subscribed to queue changes: False from the moment the
        connection to Redis fails until it is made again (no I/O: the listener knows)."""
        return self._following

    async def health(self, timeout: float) -> str:
        """"ok" while Redis answers PING within `timeout` seconds and this process follows
        queue changes, "loading N%" while Redis loads its data, "unreachable" otherwise."""
        try:
            async with asyncio.timeout(timeout):
                loading = await self._loading_progress()
        except (RedisError, OSError, TimeoutError):
            return "unreachable"
        if loading is not None:
            return f"loading {loading:.0f}%"
        return "ok" if self._following else "unreachable"

    async def _loading_progress(self) -> float | None:
        """The percent loaded while Redis loads its data, None once it serves (PING answered).
        One round trip on one connection, outside the client's retries: a loading Redis answers
        only between chunks of its load (Redis 6.2: every 2 MB read), and a retry of LOADING,
        a ConnectionError to redis-py, closed the connection and set up another each time,
        which outlasted /readyz's bound. INFO, which a loading Redis answers, goes with the
        PING; its reply is used only when PING answered LOADING."""
        pool = self.redis.connection_pool
        # redis-py before 5.3 requires the command's name (the pyproject floor is 5.0.1); later
        # ones warn when given it.
        named = inspect.signature(pool.get_connection).parameters["command_name"]
        connection = await (pool.get_connection("PING") if named.default is inspect.Parameter.empty
                            else pool.get_connection())
        try:
            await connection.send_packed_command(
                connection.pack_commands([("PING",), ("INFO", "persistence")]),
                check_health=False)  # the PING is the check
            try:
                # Kept open on LOADING, which redis-py reads as a broken connection: the INFO's
                # reply follows on it.
                await connection.read_response(disconnect_on_error=False)
            except BusyLoadingError:
                info = await self.redis.parse_response(connection, "INFO")
                return float(info.get("loading_loaded_perc", 0))
            with contextlib.suppress(ResponseError):  # a user whose ACL denies INFO
                await connection.read_response()
            return None
        except BaseException:
            await connection.disconnect(nowait=True)  # a reply may be left unread
            raise
        finally:
            await pool.release(connection)

    def _set_following(self, following: bool) -> None:
        self._following = following
        STORE_UP.set(1 if following else 0)

    # --- keeping the cache fresh ------------------------------------------------------------

    async def refresh(self) -> dict[str, Queue]:
        """Reload every queue. A corrupt record keeps its last good configuration."""
        records, corrupt, version = await self._read_records()
        queues = {name: record.queue for name, record in records.items()}
        for name, exc in sorted(corrupt.items()):
            _log_ignored(name, exc)
            if name in self._queues:
                queues[name] = self._queues[name]
        self._queues = queues
        self._loaded = True
        self._config_version = version
        return dict(queues)

    async def _read_records(
        self,
    ) -> tuple[dict[str, QueueRecord], dict[str, ValueError], str | None]:
        """Every queue record, with the config version they are at (read in one transaction);
        the records that do not parse come apart, with why, for each caller's own policy."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(QUEUES_KEY).get(CONFIG_VERSION_KEY)
            raw, version = await pipe.execute()
        records: dict[str, QueueRecord] = {}
        corrupt: dict[str, ValueError] = {}
        for name, value in raw.items():
            try:
                records[name] = QueueRecord.from_json(name, value)
            except ValueError as exc:
                corrupt[name] = exc
        return records, corrupt, version

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._closing:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANGED_CHANNEL, *self._followers)
                    # Subscribed first, so no change falls in between.
                    await self.refresh()
                    for follower in self._followers.values():
                        await follower.resync()
                    backoff = 0.1
                    if not self._following:
                        log.info("queue updates: store reachable again")
                    self._set_following(True)
                    while not self._closing:
                        message = await pubsub.get_message(timeout=RECHECK_INTERVAL)
                        if message is None:
                            await self._recheck()
                        elif message["channel"] != CHANGED_CHANNEL:
                            await self._followers[message["channel"]].changed(message["data"])
                        else:
                            await self._queue_changed(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._following:
                    log.warning("queue updates: store unreachable (%s); routing from the last "
                                "configuration seen, retrying", type(exc).__name__)
            except Exception:  # whatever it was, this process must keep following changes
                log.exception("queue updates: unexpected error; retrying")
            if self._closing:
                break
            self._set_following(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _queue_changed(self, message: str) -> None:
        """Apply a change message (`<config version> <queue name>`): read that one queue when
        this process holds the configuration as it was just before the change; reload every
        queue after a gap (a lost message) or for a bare version (an older release's message)."""
        version, _, name = message.partition(" ")
        held, new = _config_number(self._config_version), _config_number(version)
        if held is not None and new is not None and new <= held:
            return  # known already: this process's own write, or a reload that read it
        if not name or held is None or new != held + 1:
            await self.refresh()
            return
        raw = await self.redis.hget(QUEUES_KEY, name)
        if self._config_version != str(held):
            return  # a reload (a write's, in this process) read a newer configuration meanwhile
        self._take(name, raw)
        self._config_version = version

    def _take(self, name: str, raw: str | None) -> None:
        """Cache queue `name` as Redis holds it (None: deleted); a corrupt record keeps the last
        good configuration."""
        if raw is None:
            self._queues.pop(name, None)
            return
        try:
            self._queues[name] = QueueRecord.from_json(name, raw).queue
        except ValueError as exc:
            _log_ignored(name, exc)

    async def _recheck(self) -> None:
        """Reload what changed while no message said so (one was lost)."""
        followers = list(self._followers.values())
        versions = await self.redis.mget(CONFIG_VERSION_KEY,
                                         *(follower.version_key for follower in followers))
        if versions[0] != self._config_version:
            await self.refresh()
        for follower, version in zip(followers, versions[1:], strict=True):
            if version != follower.version:
                await follower.resync()

    # --- admin reads ------------------------------------------------------------------------

    async def records(self) -> list[QueueRecord]:
        """Every queue's record, by name."""
        return (await self.records_page())[0]

    async def records_page(self, search: str = "", offset: int = 0,
                           limit: int | None = None) -> tuple[list[QueueRecord], int]:
        """The records of the queues that `search` finds (ivr.queues.queue_matches), by name,
        from `offset` on (at most `limit`), and how many it finds in all. Found in this
        process's queues at the live version; only the page's records are read and parsed."""
        queues, _ = await self._cached_at_live_version()
        names = sorted(name for name, queue in queues.items()
                       if queue_matches(name, queue, search))
        page = names[offset:] if limit is None else names[offset:offset + limit]
        raw = await self.redis.hmget(QUEUES_KEY, page) if page else []
        records = [record for name, value in zip(page, raw, strict=True)
                   if value is not None and (record := self._parse(name, value)) is not None]
        return records, len(names)

    async def record(self, name: str) -> QueueRecord | None:
        raw = await self.redis.hget(QUEUES_KEY, name)
        return None if raw is None else self._parse(name, raw)

    async def history(self, name: str, limit: int, before: int | None = None) -> HistoryPage:
        """Up to `limit` versions of the queue below version `before` (default: from the
        newest), newest first; also after the queue was deleted. Reads only those: the kept
        versions are consecutive numbers up to the queue's counter."""
        oldest, newest = await self.kept_versions(name)
        numbers = page_numbers(oldest, newest, limit, before)
        raw = await self.redis.hmget(history_key(name), numbers) if numbers else []
        records = {number: record for number, value in zip(numbers, raw, strict=True)
                   if value is not None and (record := self._parse(name, value)) is not None}
        shown = numbers[:limit]
        below = records.get(numbers[limit]) if len(numbers) > limit else None
        return HistoryPage([records[number] for number in shown if number in records], below,
                           next_before(shown, oldest), oldest if newest else 0)

    async def kept_versions(self, name: str) -> tuple[int, int]:
        """The oldest and the newest version of the queue kept (newest 0: it never had one)."""
        return await kept_versions(self.redis, counter_key(name), history_key(name))

    async def version(self, name: str, version: int) -> QueueRecord | None:
        """Version `version` of the queue, or None if it never had one (or it is corrupt)."""
        raw = await self.redis.hget(history_key(name), str(version))
        return None if raw is None else self._parse(name, raw)

    async def version_missing(self, name: str, version: int) -> QueueNotFound:
        """Why version `version` of the queue cannot be had, naming the versions kept."""
        oldest, newest = await self.kept_versions(name)
        if not newest:
            return QueueNotFound(f"queue {name!r}")
        if 1 <= version < oldest:
            return VersionNotKept(
                f"version {version} of queue {name!r} is no longer kept: the oldest kept is "
                f"{oldest} (IVR_QUEUE_VERSIONS_KEPT, IVR_ADMIN_HISTORY_DAYS)")
        return VersionNotKept(f"queue {name!r} has no version {version} (its versions are "
                              f"{oldest} to {newest})")

    async def audit(self, offset: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """Audit entries, newest first, and how many there are in all."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(AUDIT_KEY, offset, offset + limit - 1).llen(AUDIT_KEY)
            entries, total = await pipe.execute()
        return [json.loads(entry) for entry in entries], total

    @staticmethod
    def _parse(name: str, raw: str) -> QueueRecord | None:
        try:
            return QueueRecord.from_json(name, raw)
        except ValueError as exc:  # left out; a PUT replaces it
            log.error("queue %r in the store is invalid: %s", name, exc)
            return None

    # --- admin writes -----------------------------------------------------------------------

    async def put(
        self, name: str, queue: Queue, who: str, if_match: str | None = None,
        action: str | None = None, extra: dict[str, Any] | None = None,
    ) -> Written:
        """Create or replace queue `name`. Content equal to the current queue's writes nothing
        (no version, no audit entry): the current record is the answer.

        `if_match`: None, a version number that must still be current (else StaleVersion;
        MUST_NOT_EXIST holds only while the queue does not exist, NEVER_MATCHES never), or
        MUST_EXIST (else QueueNotFound). Raises InvalidChange when the change breaks an overflow
        chain.
        """
        for attempt in range(MAX_WRITE_ATTEMPTS):
            queues, config_version = await self._cached_at_live_version()
            if queue.overflow is not None:
                # Only the changed queue's chain can break: any new cycle passes through it.
                check_change(name, ChainMap({name: queue}, queues))
            at = _now()
            entry = {"at": at, "who": who,
                     "action": action or ("create" if name not in queues else "update"),
                     "queue": name, **(extra or {})}
            # Only an overflow can be broken by concurrent changes to other queues; other writes
            # need not wait for the rest of the configuration to hold still.
            guard = config_version if queue.overflow is not None else ""
            status, version, replaced, config_now = await self._run_write(
                name, _record_json(queue, who, at), if_match, guard, entry)
            # The record the script replaced, or found with these values already.
            previous = self._parse(name, replaced) if replaced else None
            if status == "unchanged" and previous is not None:
                return Written(previous, previous.queue)
            if status == "ok":
                self._saw_own_write(name, queue, config_now)
                return Written(QueueRecord(name, queue, version, at, who),
                               previous.queue if previous is not None else None)
            await _back_off(attempt)
        raise Busy("the queue configuration is changing too fast to write; try again")

    async def delete(self, name: str, who: str, routed_by: QueueUsers,
                     if_match: str | None = None) -> None:
        """Delete queue `name`, unless `routed_by` routes to it or another queue overflows to
        it (QueueInUse), both as they are in Redis when it is deleted."""
        for attempt in range(MAX_WRITE_ATTEMPTS):
            queues, config_version = await self._cached_at_live_version()
            if name not in queues:
                raise QueueNotFound(name)
            users_at, users = await routed_by.users()
            if name in users:
                raise QueueInUse(f"queue {name!r} is routed to by {users[name]}")
            overflowing = sorted(n for n, q in queues.items() if q.overflow == name and n != name)
            if overflowing:
                raise QueueInUse(f"queue {name!r} is the overflow of {', '.join(overflowing)}")
            entry = {"at": _now(), "who": who, "action": "delete", "queue": name}
            status, _, _, config_now = await self._run_write(
                name, "", if_match, config_version, entry, guard=(routed_by.key, users_at))
            if status == "ok":
                self._saw_own_write(name, None, config_now)
                return
            await _back_off(attempt)
        raise Busy("the queue configuration is changing too fast to write; try again")

    async def rollback(self, name: str, version: int, who: str,
                       if_match: str | None = None) -> Written:
        """Make version `version` of the queue current again, as a new version (none when it
        holds what is current); re-creates a deleted queue."""
        old = await self.version(name, version)
        if old is None:
            raise await self.version_missing(name, version)
        return await self.put(name, old.queue, who, if_match, action="rollback",
                              extra={"rolled_back_to": version})

    async def _cached_at_live_version(self) -> tuple[dict[str, Queue], str]:
        """The queues and the config version they are at, from this process's cache when it
        holds the live version (one GET; the listener keeps it so), else read whole again. A
        write guarded on that version is refused by the script if anything changed since."""
        live = await self.redis.get(CONFIG_VERSION_KEY)
        if not self._loaded or live != self._config_version:
            await self.refresh()
        return self._queues, self._config_version or "0"

    def _saw_own_write(self, name: str, queue: Queue | None, config_version: int) -> None:
        """This process sees its own change at once (None: the queue was deleted). A cache at
        the version just before it is then at this one, and its own message is known already."""
        held = _config_number(self._config_version)
        if held is not None and held >= config_version:
            return  # a reload read this change, or a newer one, already
        if queue is None:
            self._queues.pop(name, None)
        else:
            self._queues[name] = queue
        if held == config_version - 1:
            self._config_version = str(config_version)

    async def _run_write(self, name: str, record_json: str, if_match: str | None,
                         config_version: str, entry: dict[str, Any],
                         guard: tuple[str, str] | None = None) -> tuple[str, int, str, int]:
        """The write script's status, the version now current, the record it replaced (or
        found unchanged; '' for none) and the config version a write made (0: none). `guard`:
        a key and the value it must still have."""
        keys = [QUEUES_KEY, history_key(name), counter_key(name), AUDIT_KEY, CONFIG_VERSION_KEY]
        args = [name, record_json, if_match or "", config_version, json.dumps(entry),
                CHANGED_CHANNEL]
        if guard is not None:
            keys.append(guard[0])
        args += [guard[1] if guard is not None else "", str(self.retention.queue_versions),
                 str(self.retention.audit_entries), self.retention.cutoff()]
        status, version, replaced, *config_version = await self._write(keys=keys, args=args)
        if status == "stale":
            raise StaleVersion(int(version))
        if status == "missing":
            raise QueueNotFound(name)
        return status, int(version), replaced, int(config_version[0]) if config_version else 0


async def _back_off(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))


def check_change(name: str, queues: Mapping[str, Queue]) -> None:
    """InvalidChange unless queue `name`'s overflow chain in `queues` ends, at a queue."""
    try:
        check_overflow_from(name, queues)
    except ValueError as exc:
        raise InvalidChange(str(exc)) from None


def _config_number(version: str | None) -> int | None:
    """A config version as a number (None: not one, so nothing can be said to follow it)."""
    return int(version) if version is not None and version.isdigit() else None


def _log_ignored(name: str, exc: ValueError) -> None:
    log.error("queue %r in the store is invalid and is ignored: %s", name, exc)

