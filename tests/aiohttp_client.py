"""The reference client the tests hold `HttptoolsClient` against: aiohttp behind the same
`HttpClient` interface (the server's client until aiohttp's CPU per lookup was found to be a
fifth of a call's)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from ivr.flows import http
from ivr.flows.http import HttpConnectionError, HttpReply, HttpTimeout, check_headers


class AiohttpClient:
    """A pool of keep-alive connections over one `aiohttp.ClientSession`; build it inside the
    event loop that uses it, and `aclose()` it there.

    max_connections: connections open at once, across hosts; further requests wait for one.
    """

    def __init__(self, max_connections: int = 100) -> None:
        connector = aiohttp.TCPConnector(limit=max_connections,
                                         keepalive_timeout=http.KEEPALIVE_SECONDS)
        # No aiohttp timeouts: send() bounds the whole exchange itself, with one timer.
        no_timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None,
                                           sock_read=None)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=no_timeout, cookie_jar=aiohttp.DummyCookieJar(),
            # A flow's body goes out with the Content-Type its headers give, or none (as httpx).
            skip_auto_headers=("User-Agent", "Content-Type"))

    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   content: bytes | None, timeout: float, max_bytes: int) -> HttpReply:
        check_headers(headers)
        try:
            async with asyncio.timeout(timeout):
                async with self._session.request(method, url, headers=headers, data=content,
                                                  allow_redirects=False) as response:
                    status = response.status
                    if not 200 <= status < 300:
                        return HttpReply(status, None)
                    length = response.content_length
                    if length is not None and length > max_bytes:
                        return HttpReply(status, None)
                    return HttpReply(status, await _read(response.content, max_bytes))
        except TimeoutError:  # aiohttp's ServerTimeoutError is one too
            raise HttpTimeout(f"no complete answer within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # InvalidURL is a ValueError
            raise HttpConnectionError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> AiohttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _read(stream: aiohttp.StreamReader, max_bytes: int) -> bytes | None:
    """The body, or None as soon as it runs past `max_bytes`."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.readany():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
