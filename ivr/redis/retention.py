"""How much admin history the stores keep: queue versions, flow versions and audit entries, by
count and by age. The write scripts trim as they write (no sweeper), and never what is live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the settings import this module: an offline simulation loads no Redis client
    import redis.asyncio as redis

# A year of an automated change a minute is 525,600 changes: each bound keeps far fewer, so
# admin data stays a few megabytes however long a deployment runs (README, Settings).
QUEUE_VERSIONS_KEPT = 1_000
FLOW_VERSIONS_KEPT = 200
AUDIT_ENTRIES_KEPT = 100_000
# Sessions pinned to a flows version live minutes: the newest versions stay whatever the
# settings say, so a call that started on one a moment ago still finds it.
MIN_FLOW_VERSIONS_KEPT = 10


@dataclass(frozen=True)
class Retention:
    """The bounds: the newest `*_kept` of each, and (with `days`) none older than that; 0 days
    is no age bound. A version's age is how long ago the next version replaced it."""

    queue_versions: int = QUEUE_VERSIONS_KEPT
    flow_versions: int = FLOW_VERSIONS_KEPT
    audit_entries: int = AUDIT_ENTRIES_KEPT
    days: float = 0.0

    def cutoff(self) -> str:
        """What the scripts compare timestamps with: entries written before it go ('' for no
        age bound). The stores' timestamps are ISO 8601 in UTC, which sort as text."""
        if not self.days:
            return ""
        return (datetime.now(UTC) - timedelta(days=self.days)).isoformat(timespec="milliseconds")


# trim_versions: the history of versions numbered 1, 2, ... in a hash (version -> JSON with a timestamp field,
# `stamp`), trimmed from the oldest, so the versions kept are always the newest, consecutive:
# what is beyond the newest `keep`, and what was replaced before the cutoff, but never the
# newest `floor` (the live version among them). `also`: a hash of the same versions trimmed
# alike ('' for none). Returns the oldest version kept.
TRIM_LUA = """
local function trim_versions(key, also, newest, keep, floor, cutoff, stamp)
  local oldest = newest - redis.call('HLEN', key) + 1
  while newest - oldest + 1 > floor do
    local drop = newest - oldest + 1 > keep
    if not drop and cutoff ~= '' then
      local ok, next_one = pcall(cjson.decode, redis.call('HGET', key, oldest + 1) or 'null')
      drop = ok and type(next_one) == 'table' and type(next_one[stamp]) == 'string'
        and next_one[stamp] < cutoff
    end
    if not drop then break end
    redis.call('HDEL', key, oldest)
    if also ~= '' then redis.call('HDEL', also, oldest) end
    oldest = oldest + 1
  end
  return oldest
end
-- The audit list, newest first: the newest `keep`, none written before the cutoff.
local function trim_audit(key, keep, cutoff)
  redis.call('LTRIM', key, 0, keep - 1)
  if cutoff == '' then return end
  while true do
    local ok, entry = pcall(cjson.decode, redis.call('LINDEX', key, -1) or 'null')
    if not (ok and type(entry) == 'table' and type(entry.at) == 'string' and entry.at < cutoff)
    then return end
    redis.call('RPOP', key)
  end
end
"""


async def kept_versions(client: redis.Redis, counter_key: str, versions_key: str
                        ) -> tuple[int, int]:
    """The oldest and the newest version kept in a history trimmed by trim_versions (newest 0:
    none was ever written): the newest is the counter, and they are consecutive up to it."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(counter_key).hlen(versions_key)
        counter, kept = await pipe.execute()
    newest = int(counter or 0)
    return newest - int(kept) + 1, newest


def page_numbers(oldest: int, newest: int, limit: int, before: int | None) -> list[int]:
    """The version numbers of a page, newest first: up to `limit` below `before` (default:
    from the newest), and the one below them if it is kept (what the page's last changed
    from)."""
    top = newest if before is None else min(newest, before - 1)
    return list(range(top, max(oldest, top - limit) - 1, -1))


def next_before(shown: list[int], oldest: int) -> int | None:
    """What `before` gets the page after the one showing `shown` (None: it was the last)."""
    return shown[-1] if shown and shown[-1] > oldest else None
