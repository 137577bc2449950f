"""AiohttpClient against a real HTTP server on loopback: what each answer and failure becomes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from ivr.flows.http import AiohttpClient, HttpConnectionError, HttpReply, HttpTimeout
from tests.servers import free_port

T = TypeVar("T")
MAX_BYTES = 1000
CHUNK = b"x" * 100


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def response(status: int, body: bytes = b"", *headers: str) -> bytes:
    head = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 {status} X\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class LoopbackServer:
    """HTTP/1.1 on 127.0.0.1, written by hand to misbehave on demand; it records every request
    and counts the connections it accepted. Paths:

    /json: 200 and a small JSON body (and a cookie)      /missing: 404
    /redirect: 302 to /json                              /big: a body past MAX_BYTES
    /chunks/N: a chunked body, N chunks of 100 bytes     /hang: never answers
    /trickle: a byte every 50 ms, for 5 s                /cut: closes 10 bytes into 1000
    """

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[Request] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be closed."""
        request_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        method, path, _ = request_line.split(" ")
        headers = {name.lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines if line)}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        self.requests.append(Request(method, path, headers, body))
        if path == "/json":
            writer.write(response(200, b'{"tier": "gold"}', "Set-Cookie: session=1"))
        elif path == "/missing":
            writer.write(response(404, b'{"error": "unknown"}'))
        elif path == "/redirect":
            writer.write(response(302, b"", "Location: /json"))
        elif path == "/big":
            writer.write(response(200, b"x" * (MAX_BYTES + 1)))
        elif path.startswith("/chunks/"):
            writer.write(b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(int(path.removeprefix("/chunks/"))):
                writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                await writer.drain()
                await asyncio.sleep(0.005)  # so that the client reads them one by one
            writer.write(b"0\r\n\r\n")
        elif path == "/hang":
            await reader.read()  # until the client gives up
            return False
        elif path == "/trickle":
            writer.write(b"HTTP/1.1 200 X\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path == "/cut":
            writer.write(b"HTTP/1.1 200 X\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
            return False
        else:
            raise AssertionError(f"no such path {path}")
        await writer.drain()
        return True


def with_server(scenario: Callable[[LoopbackServer, AiohttpClient], Awaitable[T]],
                **client: Any) -> T:
    async def go() -> T:
        async with LoopbackServer() as server, AiohttpClient(**client) as http:
            return await scenario(server, http)

    return asyncio.run(go())


def get(path: str, timeout: float = 2.0) -> HttpReply:
    return with_server(lambda server, http: http.send(
        "GET", server.url + path, {}, None, timeout, MAX_BYTES))


def get_url(url: str) -> HttpReply:
    async def go() -> HttpReply:
        async with AiohttpClient() as http:
            return await http.send("GET", url, {}, None, 2.0, MAX_BYTES)

    return asyncio.run(go())


def test_a_2xx_answer_comes_with_its_body() -> None:
    assert get("/json") == HttpReply(200, b'{"tier": "gold"}')


def test_a_chunked_body_is_read_whole() -> None:
    assert get("/chunks/3") == HttpReply(200, CHUNK * 3)


def test_another_status_comes_without_its_body() -> None:
    assert get("/missing") == HttpReply(404, None)


def test_a_redirect_is_not_followed() -> None:
    assert get("/redirect") == HttpReply(302, None)


def test_a_body_past_max_bytes_comes_as_none_whether_its_length_is_announced_or_not() -> None:
    assert get("/big") == HttpReply(200, None)
    assert get(f"/chunks/{MAX_BYTES // len(CHUNK) + 1}") == HttpReply(200, None)


def test_the_request_goes_out_as_given_without_user_agent_or_kept_cookies() -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[Request]:
        for _ in range(2):  # the first answer sets a cookie
            await http.send("POST", server.url + "/json", {"Authorization": "Bearer t"},
                            b'{"number": "+15550000001"}', 2.0, MAX_BYTES)
        return server.requests

    first, second = with_server(scenario)
    assert (second.method, second.path, second.body) == (
        "POST", "/json", b'{"number": "+15550000001"}')
    assert second.headers["authorization"] == "Bearer t"
    assert not {"user-agent", "cookie", "content-type"} & (first.headers.keys()
                                                           | second.headers.keys())


def test_a_header_value_that_is_not_ascii_is_refused_before_any_request() -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[Request]:
        with pytest.raises(HttpConnectionError):
            await http.send("GET", server.url + "/json", {"X-Name": "Zoë"}, None, 2.0, MAX_BYTES)
        return server.requests

    assert with_server(scenario) == []


def test_a_server_that_never_answers_times_out() -> None:
    started = time.monotonic()
    with pytest.raises(HttpTimeout):
        get("/hang", timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_the_timeout_bounds_the_whole_exchange_even_while_the_body_trickles_in() -> None:
    started = time.monotonic()
    with pytest.raises(HttpTimeout):
        get("/trickle", timeout=0.5)  # every byte comes in time, the body in 5 s
    assert time.monotonic() - started < 2.5


def test_a_refused_connection_is_a_connection_error() -> None:
    with pytest.raises(HttpConnectionError):
        get_url(f"http://127.0.0.1:{free_port()}/customers/1")


@pytest.mark.parametrize("url", ["http://[::1/customers", "http://", "http://127.0.0.1:99999/"])
def test_an_invalid_url_is_a_connection_error(url: str) -> None:
    with pytest.raises(HttpConnectionError):
        get_url(url)


def test_a_connection_closed_in_the_middle_of_the_body_is_a_connection_error() -> None:
    with pytest.raises(HttpConnectionError):
        get("/cut")


def test_connections_are_kept_alive_and_never_more_than_the_pool_allows() -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> tuple[set[int], int]:
        statuses = set()
        for _ in range(5):
            replies = await asyncio.gather(*(
                http.send("GET", server.url + "/json", {}, None, 2.0, MAX_BYTES)
                for _ in range(20)))
            statuses |= {reply.status for reply in replies}
        return statuses, server.connections

    statuses, connections = with_server(scenario, max_connections=4)
    assert statuses == {200}
    assert connections <= 4  # for 100 requests


def test_the_pool_still_serves_after_an_answer_it_did_not_read() -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[int]:
        paths = ["/missing", "/big", "/json", "/cut", "/json"]
        statuses = []
        for path in paths:
            try:
                statuses.append((await http.send(
                    "GET", server.url + path, {}, None, 2.0, MAX_BYTES)).status)
            except HttpConnectionError:
                statuses.append(0)
        return statuses

    assert with_server(scenario) == [404, 200, 200, 0, 200]
