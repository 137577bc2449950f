"""HTTP as flows see it: one request, its status and a bounded body, or one of two failures.

`HttpClient` is all a step needs. `HttptoolsClient`, the server's, is HTTP/1.1 written for that
one job, at a sixth of aiohttp's CPU per request (the tests hold the two side by side:
tests/aiohttp_client.py); the simulator answers from mocks through the same interface.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import quote, unquote, urlsplit

import httptools


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


# A kept-alive connection the server closed as the request went out is tried again, once, on a
# new one, for these methods only: the others may have been applied (RFC 9112, 9.3.1.1; as aiohttp).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Without content, the other methods say `Content-Length: 0` (as aiohttp).
_WITHOUT_BODY = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NOT_IN_HOST = re.compile(r"[\x00-\x20\x7f]")
# What a request target keeps as it is; anything else (a space, non-ASCII) is percent-encoded.
_TARGET_SAFE = "".join(map(chr, range(0x21, 0x7F)))
# Dropped from a flow's headers: the client frames the body itself, and a wrong length would put
# the connection out of step. (A flow's Host replaces the client's, as with aiohttp.)
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class HttptoolsClient:
    """HTTP/1.1 on asyncio transports with httptools' parser, and a pool of keep-alive
    connections per origin (the latest idle one is reused first; one past `KEEPALIVE_SECONDS`
    idle is closed). `send` has the same semantics as aiohttp's (tests/aiohttp_client.py);
    `aclose()` it in the event loop that used it.

    max_connections: connections open at once, across origins; further requests wait for one,
    first come first served, and the wait counts in their timeout.
    """

    def __init__(self, max_connections: int = 100) -> None:
        assert max_connections >= 1, "max_connections must be at least 1"
        self._max = max_connections
        self._keepalive = KEEPALIVE_SECONDS
        # Slots: connections open or opening, idle ones included; at most `_max`.
        self._open = 0
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        # Requests waiting for a slot: each future gets an idle connection to its origin, or
        # None for a slot of its own.
        self._waiters: deque[tuple[tuple[str, str, int], asyncio.Future[_Connection | None]]] = (
            deque())
        self._connections: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   content: bytes | None, timeout: float, max_bytes: int) -> HttpReply:
        check_headers(headers)
        if self._closed:
            raise HttpConnectionError("the client is closed")
        origin, target = _target(url)
        request = _request(method, origin, target, headers, content)
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(origin, request, method, max_bytes)
        except TimeoutError:
            raise HttpTimeout(f"no complete answer within {timeout:g}s") from None

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(HttpConnectionError("the client is closed"))
        self._waiters.clear()
        connections = list(self._connections)
        self._idle.clear()
        for connection in connections:
            connection.idle = False
            self._close(connection)
        await asyncio.gather(*(connection.closed for connection in connections
                               if connection.transport is not None))

    async def __aenter__(self) -> HttptoolsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _exchange(self, origin: _Origin, request: bytes, method: str,
                        max_bytes: int) -> HttpReply:
        connection = await self._connection(origin)
        try:
            try:
                await connection.ask(request, max_bytes, method == "HEAD")
            except _StaleConnection:
                if method not in _IDEMPOTENT:
                    raise
                self._close(connection, keep_slot=True)
                connection = await self._connect(origin)
                await connection.ask(request, max_bytes, method == "HEAD")
        except BaseException:  # the caller's cancellation or timeout too
            self._close(connection)
            raise
        chunks = connection.chunks
        reply = HttpReply(connection.status, None if chunks is None else b"".join(chunks))
        if connection.reusable:
            self._release(connection)
        else:
            self._close(connection)
        return reply

    async def _connection(self, origin: _Origin) -> _Connection:
        """An idle connection to `origin`, or a new one in a free slot, waiting for one."""
        connection = self._take_idle(origin.key)
        if connection is not None:
            return connection
        if self._open < self._max:
            self._open += 1
        elif not self._evict_idle():
            connection = await self._wait(origin.key)
            if connection is not None:
                return connection
        return await self._connect(origin)

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        connection = stack.pop()
        connection.idle = False
        if time.monotonic() - connection.idle_since < self._keepalive:
            return connection
        # Past its age; the ones under it are older still.
        stack.append(connection)
        for expired in stack:
            expired.idle = False
            self._close(expired)
        stack.clear()
        return None

    def _evict_idle(self) -> bool:
        """Close the longest idle connection (to another origin) and keep its slot."""
        stacks = [stack for stack in self._idle.values() if stack]
        if not stacks:
            return False
        stack = min(stacks, key=lambda stack: stack[0].idle_since)
        connection = stack.pop(0)
        connection.idle = False
        self._close(connection, keep_slot=True)
        return True

    async def _wait(self, key: tuple[str, str, int]) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append((key, waiter))
        try:
            return await waiter
        except BaseException:
            # A cancelled waiter stays in the queue, skipped when its turn comes.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                granted = waiter.result()  # and then cancelled: given back
                if granted is None:
                    self._free_slot()
                else:
                    self._release(granted)
            raise

    async def _connect(self, origin: _Origin) -> _Connection:
        """A new connection, in a slot the caller holds; the slot is freed if it fails."""
        loop = asyncio.get_running_loop()
        connection = _Connection(self, origin, loop)
        self._connections.add(connection)
        try:
            await loop.create_connection(
                lambda: connection, origin.host, origin.port,
                ssl=_tls_context() if origin.tls else None,
                server_hostname=origin.host if origin.tls else None)
        except BaseException as exc:  # cancelled too: a transport made meanwhile is closed
            self._close(connection)
            if isinstance(exc, (OSError, ValueError)):  # UnicodeError is a ValueError
                raise HttpConnectionError(f"{type(exc).__name__}: {exc}") from exc
            raise
        if self._closed:
            self._close(connection)
            raise HttpConnectionError("the client is closed")
        return connection

    def _release(self, connection: _Connection) -> None:
        """Hand a connection that can serve again to the first waiter, or keep it idle."""
        # A lost one may come back from a waiter that was cancelled as it was handed over.
        if self._closed or connection.closed.done():
            self._close(connection)
            return
        connection.idle_since = time.monotonic()
        while self._waiters:
            key, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if key == connection.origin.key:
                waiter.set_result(connection)
            else:
                self._close(connection, keep_slot=True)
                waiter.set_result(None)
            return
        connection.idle = True
        self._idle.setdefault(connection.origin.key, []).append(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive / 2,
                                                                   self._sweep)

    def _close(self, connection: _Connection, keep_slot: bool = False) -> None:
        """Close a connection that is not idle; its slot is freed unless the caller keeps it."""
        if not connection.closed.done() and connection.transport is not None:
            connection.transport.abort()
        if connection.transport is None:
            self._connections.discard(connection)
        if connection.has_slot:
            connection.has_slot = False
            if not keep_slot:
                self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def _lost(self, connection: _Connection) -> None:
        """A connection's transport closed: an idle one leaves the pool."""
        self._connections.discard(connection)
        if connection.idle:
            connection.idle = False
            self._idle[connection.origin.key].remove(connection)
            self._close(connection)

    def _sweep(self) -> None:
        """Close the connections idle past their age (the oldest are at the bottom)."""
        self._sweeper = None
        oldest = time.monotonic() - self._keepalive
        for key, stack in list(self._idle.items()):
            expired = 0
            while expired < len(stack) and stack[expired].idle_since <= oldest:
                stack[expired].idle = False
                self._close(stack[expired])
                expired += 1
            del stack[:expired]
            if not stack:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive / 2,
                                                                  self._sweep)


class _StaleConnection(HttpConnectionError):
    """A kept-alive connection was closed before any of the answer came."""


@dataclass(frozen=True, slots=True)
class _Origin:
    key: tuple[str, str, int]  # scheme, host, port: a pool
    host: str
    port: int
    tls: bool
    host_header: str
    authorization: str | None  # from credentials in the URL


def _target(url: str) -> tuple[_Origin, str]:
    """The origin of `url` and its request target (path and query, percent-encoded; the
    fragment dropped), split as `urlsplit` does. Only the origin is cached: a lookup's URL
    carries the caller, so is new on almost every call."""
    # The messages never hold the URL: it may carry a secret (a key in the query, credentials).
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise HttpConnectionError("invalid URL: no scheme")
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter, 0, end)
        if found >= 0:
            end = found
    try:
        origin = _origin(scheme.lower(), rest[:end])
    except _BadOrigin as exc:
        raise HttpConnectionError(f"invalid URL: {exc}") from None
    except ValueError:  # urlsplit's port, IDNA's UnicodeError: their messages quote the URL
        raise HttpConnectionError("invalid URL: a bad port or host name") from None
    path, _, query = rest[end:].partition("#")[0].partition("?")
    target = (path or "/") + (f"?{query}" if query else "")
    return origin, quote(target, safe=_TARGET_SAFE)


class _BadOrigin(ValueError):
    """What is wrong with a URL's scheme or host, in words that do not quote it."""


@functools.lru_cache(maxsize=64)
def _origin(scheme: str, netloc: str) -> _Origin:
    parts = urlsplit(f"{scheme}://{netloc}")
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS:
        raise _BadOrigin("not http or https")
    if not host or _NOT_IN_HOST.search(netloc):
        raise _BadOrigin("no valid host")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    port = parts.port or _DEFAULT_PORTS[scheme]
    host_header = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        host_header += f":{port}"
    authorization = None
    if parts.username or parts.password:
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode("latin-1")).decode()
    return _Origin((scheme, host, port), host, port, scheme == "https", host_header,
                   authorization)


def _request(method: str, origin: _Origin, target: str, headers: Mapping[str, str],
             content: bytes | None) -> bytes:
    """The request, head and content, as it goes on the wire."""
    if not _TOKEN.fullmatch(method):
        raise HttpConnectionError(f"invalid method {method!r}")
    host: str | None = origin.host_header
    authorization = origin.authorization
    lines = []
    for name, value in headers.items():  # checked by send (check_headers)
        lowered = name.lower()
        if lowered == "host":
            host = None
        elif lowered == "authorization":
            authorization = None
        elif lowered in _FRAMING:
            continue
        lines.append(f"{name}: {value}\r\n")
    if content is not None:
        lines.append(f"Content-Length: {len(content)}\r\n")
    elif method not in _WITHOUT_BODY:
        lines.append("Content-Length: 0\r\n")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}\r\n")
    host_line = f"Host: {host}\r\n" if host is not None else ""
    head = f"{method} {target} HTTP/1.1\r\n{host_line}{''.join(lines)}\r\n".encode("ascii")
    return head + content if content else head


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class _Connection(asyncio.Protocol):
    """One connection, and the exchange in flight on it: `ask` sends a request, and its future
    is done when the answer is known (`status`, `chunks`, `reusable`) or failed."""

    __slots__ = ("answered", "chunks", "closed", "complete", "delimited", "has_slot",
                 "head", "idle", "idle_since", "interim", "length", "loop", "max_bytes",
                 "origin", "parser", "pool", "reusable", "reused", "size", "started", "status",
                 "transport")

    def __init__(self, pool: HttptoolsClient, origin: _Origin,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed: asyncio.Future[None] = loop.create_future()  # done once it is lost
        self.has_slot = True
        self.idle = False
        self.idle_since = 0.0
        self.answered: asyncio.Future[None] | None = None
        # The exchange in flight.
        self.reused = False
        self.head = False
        self.max_bytes = 0
        self.started = False  # a byte of the answer came
        self.interim = False  # in a 1xx answer, which is skipped
        self.status = 0  # once the head of the final answer is in
        self.length = -1  # its Content-Length
        self.delimited = False  # by Content-Length or chunks, else by the connection's end
        self.chunks: list[bytes] | None = []  # None: the body is not wanted
        self.size = 0
        self.complete = False
        self.reusable = False

    def ask(self, request: bytes, max_bytes: int, head: bool) -> asyncio.Future[None]:
        self.reused = self.answered is not None  # asked before
        if self.closed.done() or self.transport is None:
            raise (_StaleConnection if self.reused else HttpConnectionError)(
                "the connection is closed")
        self.answered = answered = self.loop.create_future()
        self.head = head
        self.max_bytes = max_bytes
        self.started = self.interim = self.delimited = self.complete = self.reusable = False
        self.status = self.size = 0
        self.length = -1
        self.chunks = []
        self.transport.write(request)
        return answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        answered = self.answered
        if answered is None or answered.done():  # nothing was asked: out of step
            self.reusable = False
            self._abort()
            return
        self.started = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.reusable = False
            answered.set_exception(HttpConnectionError(f"malformed answer: {exc!r}"))
            self._abort()
            return
        # A body that is not wanted is not waited for: only what came with the head is read.
        if self.complete or (self.status and self.chunks is None):
            answered.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if not self.closed.done():
            self.closed.set_result(None)
        self.pool._lost(self)
        answered = self.answered
        if answered is None or answered.done():
            return
        if self.status and not self.delimited and exc is None:  # the body ended with it
            self.complete = True
            answered.set_result(None)
        elif self.reused and not self.started:
            answered.set_exception(_StaleConnection("the kept-alive connection was closed"))
        else:
            answered.set_exception(HttpConnectionError(
                f"the connection closed before the answer was complete ({exc!r})"))

    def on_message_begin(self) -> None:
        if self.complete:  # more than the one answer
            self.reusable = False
        self.length = -1
        self.delimited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 14 and name.lower() == b"content-length":
            self.length = int(value)
            self.delimited = True
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self.delimited = value.lower().rstrip().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.interim = True
            return
        self.status = status
        if not 200 <= status < 300 or self.length > self.max_bytes:
            self.chunks = None
        elif self.head:  # its body is announced, not sent
            self.complete = True

    def on_body(self, body: bytes) -> None:
        chunks = self.chunks
        if chunks is not None:
            self.size += len(body)
            if self.size > self.max_bytes:
                self.chunks = None
            else:
                chunks.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.reusable = not self.head and self.parser.should_keep_alive()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
