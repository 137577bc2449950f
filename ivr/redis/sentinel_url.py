"""Sentinel URLs, `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`,
read without redis-py: the settings check them at load, and what loads the settings (the
engine, `ivr simulate`) needs no Redis client. Connecting through them: ivr.redis.sentinel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

SCHEME = "redis+sentinel://"
DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None

    def master_options(self) -> dict[str, Any]:
        """What a connection to the master takes besides its address."""
        return {"db": self.db, "username": self.username, "password": self.password}

    def display(self) -> str:
        """The URL without credentials, for a log line."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{SCHEME}{hosts}/{self.service}/{self.db}"


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SCHEME)


def parse(url: str) -> SentinelUrl:
    """Raises ValueError, without the URL in the message (it may hold a password)."""
    rest = url[len(SCHEME):]
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for host_port in filter(None, hosts.split(",")):
        bare = ":" not in host_port or host_port.endswith("]")  # no port (IPv6 in brackets)
        host, colon, port = (host_port, "", "") if bare else host_port.rpartition(":")
        if not host or (colon and not port.isdigit()):
            raise ValueError("a sentinel must be host or host:port")
        sentinels.append((host.strip("[]"), int(port) if port else DEFAULT_PORT))
    if not sentinels:
        raise ValueError("name at least one sentinel: redis+sentinel://host:26379/service")
    service, _, db = path.partition("?")[0].strip("/").partition("/")
    if not service:
        raise ValueError("name the master's service after the sentinels: .../mymaster")
    if db and not db.isdigit():
        raise ValueError("the database after the service must be a number: .../mymaster/0")
    return SentinelUrl(tuple(sentinels), service, int(db or 0), username, password)
