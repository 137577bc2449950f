"""Redis behind Sentinel: `IVR_REDIS_URL=redis+sentinel://[[user]:password@]host:port[,host:port
...]/service[/db]` (read by ivr.redis.sentinel_url), the sentinels to ask and the name of the
master they watch.

The password (and user) are the master's; the sentinels are asked without one. Every connection
asks the sentinels where the master is when it (re)connects, so after a failover the server
follows the new master by itself: redis-py's Sentinel pool for the store, and the auto-pipeline's
own connection, which also drops itself when a demoted master answers READONLY.
"""

from __future__ import annotations

from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from ivr.redis.sentinel_url import SentinelUrl

# A sentinel that does not answer within this is skipped for the next.
SENTINEL_TIMEOUT = 1.0


def manager(target: SentinelUrl) -> Sentinel:
    """redis-py's Sentinel for the sentinels `target` names."""
    return Sentinel(list(target.sentinels), socket_timeout=SENTINEL_TIMEOUT,
                    socket_connect_timeout=SENTINEL_TIMEOUT)


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[misc]
    """The master's connections, as BlockingConnectionPool hands them out: a burst of webhooks
    waits briefly for one rather than fails."""


async def master_address(target: SentinelUrl) -> tuple[str, int]:
    """Where the master is now, as the first sentinel that knows says (MasterNotFoundError, a
    redis ConnectionError, when none does)."""
    sentinels = manager(target)
    try:
        host, port = await sentinels.discover_master(target.service)
        return str(host), int(port)
    finally:
        for sentinel in sentinels.sentinels:
            await sentinel.aclose()
