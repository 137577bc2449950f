"""The flow store: every published version of the flows (their files' texts, who, when, why),
which one is live, and the audit entries of publishes and rollbacks. Checking a version's flows
is ivr.flow_versions'; this module only keeps them.

Keys (the queue store's hash tag, so a publish's script can read the queues' config version):
  {ivr}:flows:live        the live version's number
  {ivr}:flows:counter     the last version number given
  {ivr}:flows:versions    hash: version -> JSON of who, when, message, content hash, file names,
                          and routes: which queues its flows route to, by which flows (a
                          version stored before routes were kept has none); the newest
                          versions, consecutive numbers up to the counter (see Retention)
  {ivr}:flows:files       hash: version -> JSON of its files' texts, by file name (the same)
  {ivr}:audit             the queue store's audit log: a publish or rollback is an entry there
Channel:
  {ivr}:flows:changed     published with the new live version after every publish
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis

from ivr.redis.queue_store import AUDIT_KEY, CONFIG_VERSION_KEY
from ivr.redis.retention import (
    MIN_FLOW_VERSIONS_KEPT,
    TRIM_LUA,
    Retention,
    kept_versions,
    next_before,
    page_numbers,
)

if TYPE_CHECKING:
    from ivr.flows.loader import FlowSet

LIVE_KEY = "{ivr}:flows:live"
COUNTER_KEY = "{ivr}:flows:counter"
VERSIONS_KEY = "{ivr}:flows:versions"
FILES_KEY = "{ivr}:flows:files"
CHANGED_CHANNEL = "{ivr}:flows:changed"
NO_VERSION = "0"  # as a precondition: no version is live yet (a seed)

# A publish as one atomic step. The content hash decides "unchanged": a version with the live
# version's content writes nothing, so two instances seeding, or a publish sent twice, make one
# version. The queues' config version guards the check against the live queues made before it:
# a queue deleted meanwhile makes the caller check again.
# KEYS: live, counter, versions, files, audit, queues config version.
# ARGV: meta JSON (without version), files JSON, content hash, expected live version ('' = any,
#       '0' = none yet), expected queues config version ('' = any), audit entry JSON ('' = none:
#       a seed, as the queues' seed, is not an admin's change), channel, versions kept, audit
#       entries kept, the age cutoff ('' = none), versions always kept (Retention).
# Returns {status, version}: ok, unchanged (the live version has this content), stale (the live
# version is not the one expected), retry (the queues changed).
_PUBLISH_SCRIPT = TRIM_LUA + """
local live = redis.call('GET', KEYS[1]) or '0'
if ARGV[4] ~= '' and ARGV[4] ~= live then return {'stale', tonumber(live)} end
if live ~= '0' then
  local ok, meta = pcall(cjson.decode, redis.call('HGET', KEYS[3], live) or 'null')
  if ok and type(meta) == 'table' and meta.hash == ARGV[3] then
    return {'unchanged', tonumber(live)}
  end
end
if ARGV[5] ~= '' and ARGV[5] ~= (redis.call('GET', KEYS[6]) or '0') then
  return {'retry', tonumber(live)}
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], version, '{"version":' .. version .. ',' .. string.sub(ARGV[1], 2))
redis.call('HSET', KEYS[4], version, ARGV[2])
redis.call('SET', KEYS[1], version)
trim_versions(KEYS[3], KEYS[4], version, tonumber(ARGV[8]), tonumber(ARGV[11]), ARGV[10], 'at')
if ARGV[6] ~= '' then
  redis.call('LPUSH', KEYS[5], '{"flows_version":' .. version .. ',' .. string.sub(ARGV[6], 2))
  trim_audit(KEYS[5], tonumber(ARGV[9]), ARGV[10])
end
redis.call('PUBLISH', ARGV[7], version)
return {'ok', version}
"""


def _routes(routes: Mapping[str, Collection[str]] | None) -> dict[str, tuple[str, ...]] | None:
    """Routes as a version keeps them: queues and their flows in order (JSON turns the tuples
    into lists)."""
    if routes is None:
        return None
    return {queue: tuple(sorted(flows)) for queue, flows in sorted(routes.items())}


def content_hash(files: dict[str, str]) -> str:
    """What identifies a version's content: the same files, the same texts, the same hash."""
    canonical = json.dumps(files, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class FlowVersion:
    """One published version of the flows: who, when, why, and its files' names."""

    version: int
    at: str
    who: str
    message: str
    hash: str
    files: tuple[str, ...]
    action: str  # publish, rollback or seed
    rolled_back_to: int | None = None
    # Queue name -> the flows that route to it; None for a version stored before routes were.
    routes: dict[str, tuple[str, ...]] | None = None

    @classmethod
    def from_json(cls, raw: str | bytes) -> FlowVersion:
        meta = json.loads(raw)
        return cls(int(meta["version"]), str(meta.get("at", "")), str(meta.get("who", "")),
                   str(meta.get("message", "")), str(meta.get("hash", "")),
                   tuple(meta.get("files") or ()), str(meta.get("action", "publish")),
                   meta.get("rolled_back_to"), _routes(meta.get("routes")))

    def as_dict(self) -> dict[str, Any]:
        # `file_names`: in the admin API, `files` is always name -> text.
        return {"version": self.version, "at": self.at, "who": self.who,
                "message": self.message, "hash": self.hash, "file_names": list(self.files),
                "action": self.action, "rolled_back_to": self.rolled_back_to}


@dataclass(frozen=True)
class Published:
    """What a publish did: the version now live, and whether it is new (False: the live version
    already had that content, and nothing was written)."""

    version: FlowVersion
    created: bool
    flows: FlowSet | None = None  # as loaded to check them, where that was done (ivr.flow_versions)


class StaleLive(Exception):
    """The live version is not the one the publish expected (someone published meanwhile)."""

    def __init__(self, live: int) -> None:
        super().__init__(f"the live flows version is now {live}")
        self.live = live


class QueuesChanged(Exception):
    """The queues changed between the check of the flows against them and the write."""


@dataclass(frozen=True)
class VersionsPage:
    """One page of the flows versions, newest first; `next_before`: what `before` gets the
    next page (None: this is the last); `oldest`: the oldest version kept (0: none yet)."""

    versions: list[FlowVersion]
    next_before: int | None
    oldest: int


class VersionNotKept(LookupError):
    """The flows version asked for is not kept (trimmed by retention, or never was)."""


class FlowStore:
    def __init__(self, client: redis.Redis, retention: Retention | None = None) -> None:
        self.redis = client
        self.retention = retention or Retention()
        self._publish = client.register_script(_PUBLISH_SCRIPT)

    async def live_version(self) -> int:
        """The live version's number; 0 while none was ever published."""
        return int(await self.redis.get(LIVE_KEY) or 0)

    async def version(self, version: int) -> FlowVersion | None:
        raw = await self.redis.hget(VERSIONS_KEY, str(version))
        return None if raw is None else FlowVersion.from_json(raw)

    async def files(self, version: int) -> dict[str, str] | None:
        """Version `version`'s files (name -> text), or None if there is no such version."""
        raw = await self.redis.hget(FILES_KEY, str(version))
        return None if raw is None else json.loads(raw)

    async def versions(self, limit: int, before: int | None = None) -> VersionsPage:
        """Up to `limit` versions below version `before` (default: from the newest), newest
        first. Reads only those: the kept versions are consecutive numbers up to the counter."""
        oldest, newest = await self.kept_versions()
        shown = page_numbers(oldest, newest, limit, before)[:limit]
        raw = await self.redis.hmget(VERSIONS_KEY, shown) if shown else []
        return VersionsPage([FlowVersion.from_json(meta) for meta in raw if meta is not None],
                            next_before(shown, oldest), oldest if newest else 0)

    async def kept_versions(self) -> tuple[int, int]:
        """The oldest and the newest version kept (newest 0: none was ever published)."""
        return await kept_versions(self.redis, COUNTER_KEY, VERSIONS_KEY)

    async def version_missing(self, version: int) -> VersionNotKept:
        """Why flows version `version` cannot be had, naming the versions kept."""
        oldest, newest = await self.kept_versions()
        if newest and 1 <= version < oldest:
            return VersionNotKept(f"flows version {version} is no longer kept: the oldest kept "
                                  f"is {oldest} (IVR_FLOW_VERSIONS_KEPT, "
                                  "IVR_ADMIN_HISTORY_DAYS)")
        return VersionNotKept(f"there is no flows version {version}")

    async def publish(self, files: dict[str, str], who: str, message: str, *,
                      action: str = "publish", rolled_back_to: int | None = None,
                      expected_live: str = "", queues_version: str = "",
                      routes: Mapping[str, Collection[str]] | None = None) -> Published:
        """Make `files` the live version, as a new version unless the live one has the same
        content. `expected_live`: the live version that must still be live ('' any, NO_VERSION:
        none yet), else StaleLive; `queues_version`: the queues' config version the flows were
        checked against, else QueuesChanged; `routes`: queue name -> the flows of `files` that
        route to it (what a queue's delete is checked against; None: not known)."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        digest = content_hash(files)
        meta = {"at": at, "who": who, "message": message, "hash": digest,
                "files": sorted(files), "action": action, "rolled_back_to": rolled_back_to,
                **({} if routes is None else {"routes": _routes(routes)})}
        entry = {"at": at, "who": who, "action": f"flows_{action}", "message": message,
                 "hash": digest, **({"rolled_back_to": rolled_back_to}
                                    if rolled_back_to is not None else {})}
        status, version = await self._publish(
            keys=[LIVE_KEY, COUNTER_KEY, VERSIONS_KEY, FILES_KEY, AUDIT_KEY, CONFIG_VERSION_KEY],
            args=[json.dumps(meta), json.dumps(files), digest, expected_live, queues_version,
                  "" if action == "seed" else json.dumps(entry), CHANGED_CHANNEL,
                  str(self.retention.flow_versions), str(self.retention.audit_entries),
                  self.retention.cutoff(), str(MIN_FLOW_VERSIONS_KEPT)])
        if status == "stale":
            raise StaleLive(int(version))
        if status == "retry":
            raise QueuesChanged()
        if status == "unchanged":
            current = await self.version(int(version))
            assert current is not None  # the script just read it
            return Published(current, False)
        return Published(FlowVersion(int(version), at, who, message, digest,
                                     tuple(sorted(files)), action, rolled_back_to,
                                     _routes(routes)), True)
