"""Connecting to Redis: one server or the master a Sentinel group names (`redis+sentinel://`),
and URLs written without their credentials for log lines."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection

from ivr.redis import sentinel, sentinel_url
from ivr.redis.sentinel_url import is_sentinel_url


def without_credentials(url: str) -> str:
    """A Redis URL fit for a log line: no user or password, in the address or in the query
    (redis-py takes `?password=...` too)."""
    if is_sentinel_url(url):
        try:
            return sentinel_url.parse(url).display()
        except ValueError:
            return sentinel_url.SCHEME + "(invalid)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = urlencode([(name, value) for name, value in parse_qsl(parts.query)
                       if not _CREDENTIAL_PARAMETER.search(name)])
    # Not geturl(): it writes unix:///path (no host) as unix:/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


_CREDENTIAL_PARAMETER = re.compile("pass|user", re.IGNORECASE)


def describe_redis(url: str) -> str:
    """Which Redis `url` names, without credentials, for the log line at start: behind
    Sentinel, the master's service name and the sentinels asked for it."""
    if not is_sentinel_url(url):
        return without_credentials(url)
    target = sentinel_url.parse(url)
    sentinels = ", ".join(f"{host}:{port}" for host, port in target.sentinels)
    return (f"the master {target.service} (db {target.db}) as named by the sentinels at "
            f"{sentinels}")


def connect(url: str, max_connections: int = 64) -> redis.Redis:
    """A client whose pool makes a burst of webhooks wait briefly for a connection rather than
    fail, and never opens more than `max_connections` to Redis. Behind Sentinel, to the master
    the sentinels name, whichever it is now."""
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": 2,  # seconds a command waits for a free connection
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "health_check_interval": 30,
        "retry_on_timeout": True,
        # No CLIENT SETINFO on connect: a Redis loading its data answers it LOADING, which
        # failed every new connection, /readyz's INFO included, until the load was over.
        "lib_name": None,
        "lib_version": None,
    }
    if is_sentinel_url(url):
        target = sentinel_url.parse(url)
        return sentinel.manager(target).master_for(  # type: ignore[no-any-return]
            target.service, redis_class=redis.Redis,
            connection_pool_class=sentinel.BlockingSentinelPool,
            **options, **target.master_options())
    pool = redis.BlockingConnectionPool.from_url(url, **options)
    pool.connection_class = without_health_check_in_handshake(pool.connection_class)
    return redis.Redis.from_pool(pool)  # the client owns the pool and closes it


class _NoHealthCheckInHandshake:
    """A connection whose set-up (HELLO, SELECT ...) goes without redis-py's health check: the
    socket was opened just now. With the check, a Redis loading its data answered its PING
    LOADING, a ConnectionError, so the connection was closed and opened again, set up again,
    checked again, and so on until the load ended (redis/redis-py#3745): every command on a
    new connection, /readyz's PING included, waited for the whole load."""

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=False)  # type: ignore[misc]


def without_health_check_in_handshake(
    connection_class: type[AbstractConnection],
) -> type[AbstractConnection]:
    """`connection_class` with its set-up made without a health check (health checks of a
    connection idle for `health_check_interval` still run before its commands)."""
    return type(connection_class.__name__, (_NoHealthCheckInHandshake, connection_class), {})
