"""HTTP as flows see it: one request, its status and a bounded body, or one of two failures.

`HttpClient` is all a step needs. `AiohttpClient`, the server's, is aiohttp's `ClientSession`
behind it, one per process (made in the app's lifespan); the simulator answers from mocks
through the same interface. Why aiohttp rather than a client of our own: bench/README.md,
*Why the code is written as it is*.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

# An idle pooled connection is closed after this many seconds (read when a client is built).
KEEPALIVE_SECONDS = 30.0


class HttpTimeout(Exception):
    """The exchange did not finish within its timeout."""


class HttpConnectionError(Exception):
    """No usable answer: refused or broken connection, invalid URL, malformed response."""


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    # The body of a 2xx answer; None for any other status (not read) or past `max_bytes`.
    body: bytes | None


class HttpClient(Protocol):
    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   content: bytes | None, timeout: float, max_bytes: int) -> HttpReply:
        """Make one request; `timeout` bounds the whole exchange, body included. Redirects are
        not followed. Raises HttpTimeout or HttpConnectionError."""
        ...


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# In a header value: a control character but tab (a line break would end the header), or not
# ASCII (aiohttp would send UTF-8).
_NOT_IN_VALUE = re.compile(r"[^\t\x20-\x7e]")


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse, before anything is sent, a header HTTP cannot carry: every client does, and the
    simulator, so that a flow's headers fail alike everywhere."""
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise HttpConnectionError(f"header {name!r}: not a valid name")
        if _NOT_IN_VALUE.search(value):
            raise HttpConnectionError(
                f"header {name}: the value holds a line break, a control character or non-ASCII")


# Dropped from a flow's headers: aiohttp frames the body itself, and a wrong length would put the
# kept-alive connection out of step (the next request read as this one's rest).
_FRAMING = frozenset({"content-length", "transfer-encoding"})
# Not added by aiohttp: a flow's request goes out with the headers it gives (and Host, Accept,
# Content-Length); an answer comes uncompressed, so `max_bytes` bounds what is read off the wire.
_NOT_ADDED = ("User-Agent", "Content-Type", "Accept-Encoding")
_SCHEMES = frozenset({"http", "https"})
_NOT_IN_HOST = re.compile(r"[\x00-\x20\x7f]")
# send() bounds the whole exchange itself, with one timer: aiohttp sets none of its own.
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)


class AiohttpClient:
    """A pool of keep-alive connections over one `aiohttp.ClientSession` (TLS, keep-alive,
    an idempotent request sent once more when its connection closes before any answer: as
    aiohttp does them). Build it inside the event loop that uses it, and `aclose()` it there.

    max_connections: connections open at once, across origins; further requests wait for one,
    and the wait counts in their timeout. An idle one is closed after `KEEPALIVE_SECONDS`.
    """

    def __init__(self, max_connections: int = 100) -> None:
        assert max_connections >= 1, "max_connections must be at least 1"
        connector = aiohttp.TCPConnector(limit=max_connections,
                                         keepalive_timeout=KEEPALIVE_SECONDS)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=_NO_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NOT_ADDED)

    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   content: bytes | None, timeout: float, max_bytes: int) -> HttpReply:
        check_headers(headers)
        if self._session.closed:
            raise HttpConnectionError("the client is closed")
        target, headers = _request(url, headers)
        try:
            async with asyncio.timeout(timeout):
                async with self._session.request(method, target, headers=headers, data=content,
                                                  allow_redirects=False) as response:
                    status = response.status
                    if not 200 <= status < 300 or (response.content_length or 0) > max_bytes:
                        return HttpReply(status, None)
                    return HttpReply(status, await _body(response.content, max_bytes))
        except TimeoutError:  # aiohttp's ServerTimeoutError is one too
            raise HttpTimeout(f"no complete answer within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise HttpConnectionError(_failure(exc)) from exc

    async def aclose(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> AiohttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _request(url: str, headers: Mapping[str, str]) -> tuple[URL, Mapping[str, str]]:
    """The URL to request and the headers to send. Credentials in the URL go out as Basic
    authorization unless the flow gives its own Authorization header, which wins (aiohttp
    refuses the two together)."""
    # The messages never hold the URL: it may carry a secret (a key in the query, credentials).
    try:
        target = URL(url)
    except (ValueError, TypeError):  # yarl's messages quote the URL
        raise HttpConnectionError("invalid URL: a bad port or host name") from None
    if target.scheme not in _SCHEMES:
        raise HttpConnectionError("invalid URL: not http or https")
    host = target.raw_host
    if not host or _NOT_IN_HOST.search(host):
        raise HttpConnectionError("invalid URL: no valid host")
    names = {name.lower() for name in headers}
    if "authorization" in names and (target.raw_user is not None
                                     or target.raw_password is not None):
        target = target.with_user(None)
    if not names.isdisjoint(_FRAMING):
        headers = {name: value for name, value in headers.items()
                   if name.lower() not in _FRAMING}
    return target, headers


async def _body(stream: aiohttp.StreamReader, max_bytes: int) -> bytes | None:
    """The body, or None as soon as it runs past `max_bytes` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.readany():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _failure(exc: BaseException) -> str:
    """What went wrong, without aiohttp's message, which may quote the URL."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__
