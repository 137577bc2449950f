"""The server's HTTP client (aiohttp's, ivr.flows.http) against a real HTTP server on loopback:
what each answer and failure becomes. Every test runs on each event loop (asyncio's and uvloop,
the server's)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import uvloop

from ivr.flows import http as http_module
from ivr.flows.http import AiohttpClient, HttpConnectionError, HttpReply, HttpTimeout
from tests.servers import free_port

T = TypeVar("T")
MAX_BYTES = 1000
CHUNK = b"x" * 100
JSON = b'{"tier": "gold"}'


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # the last value of a repeated header
    body: bytes
    names: list[str]  # every header's name, lower-cased, repeats included


def response(status: int, body: bytes = b"", *headers: str) -> bytes:
    head = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 {status} X\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class LoopbackServer:
    """HTTP/1.1 on 127.0.0.1, written by hand to misbehave on demand; it records every request
    and counts the connections it accepted. A HEAD request gets the head of the GET's answer.
    Paths (the query aside):

    /json: 200 and a small JSON body (and a cookie)      /missing: 404
    /redirect: 302 to /json                              /big: a body past MAX_BYTES
    /chunks/N: a chunked body, N chunks of 100 bytes     /hang: never answers
    /trickle: a byte every 50 ms, for 5 s                /cut: closes 10 bytes into 1000
    /echo/...: 200, empty                                /garbage: not HTTP
    /drop: closes without answering
    /until-close: a body that ends when the connection does
    /early-hints: a 103 answer, then /json's
    /last: /json's answer; the connection's next request is read, not answered, and the
           connection closed (as a server closing an idle connection just as a request comes)
    """

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[Request] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._last: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
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
        fields = [(name.lower(), value.strip())
                  for name, _, value in (line.partition(":") for line in lines if line)]
        headers = dict(fields)
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        self.requests.append(Request(method, path, headers, body, [name for name, _ in fields]))
        if writer in self._last:
            return False
        route = path.partition("?")[0]
        if method == "HEAD" and route == "/json":
            writer.write(response(200, JSON).removesuffix(JSON))
        elif route in ("/json", "/last"):
            writer.write(response(200, JSON, "Set-Cookie: session=1"))
            if route == "/last":
                self._last.add(writer)
        elif route == "/missing":
            writer.write(response(404, b'{"error": "unknown"}'))
        elif route == "/redirect":
            writer.write(response(302, b"", "Location: /json"))
        elif route == "/big":
            writer.write(response(200, b"x" * (MAX_BYTES + 1)))
        elif route.startswith("/chunks/"):
            writer.write(b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(int(route.removeprefix("/chunks/"))):
                writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                await writer.drain()
                await asyncio.sleep(0.005)  # so that the client reads them one by one
            writer.write(b"0\r\n\r\n")
        elif route == "/hang":
            await reader.read()  # until the client gives up
            return False
        elif route == "/trickle":
            writer.write(b"HTTP/1.1 200 X\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif route == "/cut":
            writer.write(b"HTTP/1.1 200 X\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
            return False
        elif route == "/drop":
            return False
        elif route.startswith("/echo/"):
            writer.write(response(200))
        elif route == "/garbage":
            writer.write(b"HTTP/1.1 2x0 What\r\n\r\n")
        elif route == "/until-close":
            writer.write(b"HTTP/1.1 200 X\r\nConnection: close\r\n\r\n" + CHUNK)
            await writer.drain()
            return False
        elif route == "/early-hints":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            await writer.drain()
            writer.write(response(200, JSON))
        else:
            raise AssertionError(f"no such path {path}")
        await writer.drain()
        return True


@dataclass
class Trial:
    """The client on one event loop: `run` a scenario against a fresh server and client."""

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None

    def run(self, scenario: Callable[[LoopbackServer, AiohttpClient], Awaitable[T]],
            **client: Any) -> T:
        async def go() -> T:
            async with LoopbackServer() as server, AiohttpClient(**client) as http:
                return await scenario(server, http)

        return self.run_alone(go)

    def run_alone(self, main: Callable[[], Awaitable[T]]) -> T:
        async def go() -> T:
            return await main()

        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            return runner.run(go())

    def get(self, path: str, timeout: float = 2.0) -> HttpReply:
        return self.run(lambda server, http: http.send(
            "GET", server.url + path, {}, None, timeout, MAX_BYTES))

    def get_url(self, url: str) -> HttpReply:
        async def go() -> HttpReply:
            async with AiohttpClient() as http:
                return await http.send("GET", url, {}, None, 2.0, MAX_BYTES)

        return self.run_alone(go)


LOOPS = {"asyncio": None, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=list(LOOPS))
def trial(request: pytest.FixtureRequest) -> Trial:
    return Trial(LOOPS[request.param])


@pytest.fixture
def short_keepalive(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setattr(http_module, "KEEPALIVE_SECONDS", 0.2)
    yield 0.2


async def until(condition: Callable[[], object], deadline: float = 5.0) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < deadline, "the server never got there"
        await asyncio.sleep(0.005)


async def send_get(http: AiohttpClient, server: LoopbackServer, path: str,
                   timeout: float = 2.0) -> HttpReply:
    return await http.send("GET", server.url + path, {}, None, timeout, MAX_BYTES)


def test_a_2xx_answer_comes_with_its_body(trial: Trial) -> None:
    assert trial.get("/json") == HttpReply(200, JSON)


def test_a_chunked_body_is_read_whole(trial: Trial) -> None:
    assert trial.get("/chunks/3") == HttpReply(200, CHUNK * 3)


def test_a_body_without_length_ends_with_the_connection(trial: Trial) -> None:
    assert trial.get("/until-close") == HttpReply(200, CHUNK)


def test_an_interim_1xx_answer_is_skipped(trial: Trial) -> None:
    assert trial.get("/early-hints") == HttpReply(200, JSON)


def test_another_status_comes_without_its_body(trial: Trial) -> None:
    assert trial.get("/missing") == HttpReply(404, None)


def test_a_redirect_is_not_followed(trial: Trial) -> None:
    assert trial.get("/redirect") == HttpReply(302, None)


def test_a_body_past_max_bytes_comes_as_none_whether_its_length_is_announced_or_not(
        trial: Trial) -> None:
    assert trial.get("/big") == HttpReply(200, None)
    assert trial.get(f"/chunks/{MAX_BYTES // len(CHUNK) + 1}") == HttpReply(200, None)


def test_a_head_request_gets_an_empty_body_and_the_pool_still_serves(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[HttpReply]:
        head = await http.send("HEAD", server.url + "/json", {}, None, 2.0, MAX_BYTES)
        return [head, await send_get(http, server, "/json")]

    assert trial.run(scenario) == [HttpReply(200, b""), HttpReply(200, JSON)]


def test_the_request_goes_out_as_given_without_user_agent_or_kept_cookies(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[Request]:
        for _ in range(2):  # the first answer sets a cookie
            await http.send("POST", server.url + "/json", {"Authorization": "Bearer t"},
                            b'{"number": "+15550000001"}', 2.0, MAX_BYTES)
        return server.requests

    first, second = trial.run(scenario)
    assert (second.method, second.path, second.body) == (
        "POST", "/json", b'{"number": "+15550000001"}')
    assert second.headers["authorization"] == "Bearer t"
    assert second.headers["content-length"] == "26"
    assert not {"user-agent", "cookie", "content-type"} & (first.headers.keys()
                                                           | second.headers.keys())


def test_an_answer_is_asked_for_uncompressed_so_max_bytes_bounds_what_comes(
        trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> Request:
        await send_get(http, server, "/json")
        return server.requests[0]

    assert "accept-encoding" not in trial.run(scenario).headers


def test_a_post_without_content_says_its_length_is_zero(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> Request:
        await http.send("POST", server.url + "/json", {}, None, 2.0, MAX_BYTES)
        return server.requests[0]

    assert trial.run(scenario).headers["content-length"] == "0"


def test_the_host_header_names_the_port(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> tuple[str, int]:
        await send_get(http, server, "/json")
        return server.requests[0].headers["host"], server.port

    host, port = trial.run(scenario)
    assert host == f"127.0.0.1:{port}"


def sent_get(trial: Trial, headers: dict[str, str], credentials: str = "") -> Request:
    """The GET /json that `trial`'s client sends with `headers` (and `credentials` in its URL),
    as the server read it."""
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> Request:
        url = f"http://{credentials}127.0.0.1:{server.port}/json"
        assert await http.send("GET", url, headers, None, 2.0, MAX_BYTES) == HttpReply(200, JSON)
        return server.requests[0]

    return trial.run(scenario)


def test_credentials_in_the_url_go_out_as_basic_authorization(trial: Trial) -> None:
    request = sent_get(trial, {}, credentials="api%20user:p%40ss:w@")
    assert request.headers["authorization"] == "Basic " + base64.b64encode(
        b"api user:p@ss:w").decode()
    assert request.headers["host"].startswith("127.0.0.1:")  # no credentials in it


def test_a_flows_host_header_replaces_the_clients(trial: Trial) -> None:
    request = sent_get(trial, {"Host": "loyalty.internal"})
    assert request.headers["host"] == "loyalty.internal"
    assert request.names.count("host") == 1


def test_a_flows_authorization_header_wins_over_credentials_in_the_url(
        trial: Trial) -> None:
    """aiohttp refuses the two together; a flow that sets the header means it."""
    request = sent_get(trial, {"Authorization": "Bearer t"}, credentials="user:secret@")
    assert request.headers["authorization"] == "Bearer t"
    assert request.names.count("authorization") == 1


def test_a_flows_framing_headers_are_dropped_and_the_body_framed_right(
        trial: Trial) -> None:
    """A wrong Content-Length, or a Transfer-Encoding the body does not follow, would put the
    kept-alive connection out of step: the next request would be read as this one's rest."""
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[Request]:
        framing = {"Content-Length": "999", "Transfer-Encoding": "chunked"}
        for body in (b'{"a": 1}', b'{"b": 22}'):
            reply = await http.send("POST", server.url + "/json", framing, body, 2.0, MAX_BYTES)
            assert reply == HttpReply(200, JSON)
        return server.requests

    first, second = trial.run(scenario)
    assert (first.body, second.body) == (b'{"a": 1}', b'{"b": 22}')
    assert first.headers["content-length"] == "8" and "transfer-encoding" not in first.headers
    assert first.names.count("content-length") == 1


def test_a_path_with_spaces_or_non_ascii_goes_out_percent_encoded(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[str]:
        await send_get(http, server, "/echo/Zoë Smith")
        await send_get(http, server, "/echo/%2B15550100001#fragment")
        return [request.path for request in server.requests]

    assert trial.run(scenario) == ["/echo/Zo%C3%AB%20Smith", "/echo/%2B15550100001"]


def test_a_header_value_that_is_not_ascii_is_refused_before_any_request(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[Request]:
        with pytest.raises(HttpConnectionError):
            await http.send("GET", server.url + "/json", {"X-Name": "Zoë"}, None, 2.0, MAX_BYTES)
        return server.requests

    assert trial.run(scenario) == []


def test_a_header_value_with_a_line_break_is_refused_before_any_request(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[Request]:
        with pytest.raises(HttpConnectionError):
            await http.send("GET", server.url + "/json", {"X-Name": "a\r\nX-Admin: yes"}, None,
                            2.0, MAX_BYTES)
        return server.requests

    assert trial.run(scenario) == []


def test_a_server_that_never_answers_times_out(trial: Trial) -> None:
    started = time.monotonic()
    with pytest.raises(HttpTimeout):
        trial.get("/hang", timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_the_timeout_bounds_the_whole_exchange_even_while_the_body_trickles_in(
        trial: Trial) -> None:
    started = time.monotonic()
    with pytest.raises(HttpTimeout):
        trial.get("/trickle", timeout=0.5)  # every byte comes in time, the body in 5 s
    assert time.monotonic() - started < 2.5


def test_a_timeout_leaves_the_callers_task_as_it_was(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> tuple[int, HttpReply]:
        with pytest.raises(HttpTimeout):
            await send_get(http, server, "/hang", timeout=0.2)
        task = asyncio.current_task()
        assert task is not None
        async with asyncio.timeout(2.0):  # which counts on the task's cancellations
            return task.cancelling(), await send_get(http, server, "/json")

    assert trial.run(scenario) == (0, HttpReply(200, JSON))


def test_the_wait_for_a_connection_counts_in_the_timeout_and_the_slot_comes_back(
        trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> HttpReply:
        hanging = asyncio.create_task(send_get(http, server, "/hang", timeout=10.0))
        await until(lambda: server.requests)
        with pytest.raises(HttpTimeout):
            await send_get(http, server, "/json", timeout=0.3)
        hanging.cancel()
        await asyncio.gather(hanging, return_exceptions=True)
        return await send_get(http, server, "/json")  # the one slot is free again

    assert trial.run(scenario, max_connections=1).status == 200


def test_a_refused_connection_is_a_connection_error(trial: Trial) -> None:
    with pytest.raises(HttpConnectionError):
        trial.get_url(f"http://127.0.0.1:{free_port()}/customers/1")


@pytest.mark.parametrize("url", ["http://[::1/customers", "http://", "http://127.0.0.1:99999/",
                                 "ftp://127.0.0.1/customers", "http://127.0.0.1:80x/"])
def test_an_invalid_url_is_a_connection_error(trial: Trial, url: str) -> None:
    with pytest.raises(HttpConnectionError):
        trial.get_url(url)


def test_https_to_a_plain_http_port_is_a_connection_error(trial: Trial) -> None:
    async def answer_400(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # a TLS handshake, to a server that speaks plain HTTP
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(answer_400, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, AiohttpClient() as http:
            with pytest.raises(HttpConnectionError):
                await http.send("GET", f"https://127.0.0.1:{port}/json", {}, None, 2.0,
                                MAX_BYTES)

    trial.run_alone(scenario)


def test_a_connection_closed_in_the_middle_of_the_body_is_a_connection_error(
        trial: Trial) -> None:
    with pytest.raises(HttpConnectionError):
        trial.get("/cut")


def test_a_malformed_answer_is_a_connection_error(trial: Trial) -> None:
    with pytest.raises(HttpConnectionError):
        trial.get("/garbage")


def test_connections_are_kept_alive_and_never_more_than_the_pool_allows(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> tuple[set[int], int]:
        statuses = set()
        for _ in range(5):
            replies = await asyncio.gather(*(send_get(http, server, "/json") for _ in range(20)))
            statuses |= {reply.status for reply in replies}
        return statuses, server.connections

    statuses, connections = trial.run(scenario, max_connections=4)
    assert statuses == {200}
    assert connections <= 4  # for 100 requests


def test_the_pool_still_serves_after_an_answer_it_did_not_read(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[int]:
        paths = ["/missing", "/big", "/json", "/cut", "/json", "/garbage", "/json"]
        statuses = []
        for path in paths:
            try:
                statuses.append((await send_get(http, server, path)).status)
            except HttpConnectionError:
                statuses.append(0)
        return statuses

    assert trial.run(scenario) == [404, 200, 200, 0, 200, 0, 200]


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once_on_a_new_one(
        trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> tuple[list[HttpReply], int]:
        replies = [await send_get(http, server, path) for path in ("/last", "/json")]
        return replies, server.connections

    replies, connections = trial.run(scenario)
    assert replies == [HttpReply(200, JSON), HttpReply(200, JSON)]
    assert connections == 2


def test_a_post_on_a_kept_alive_connection_closed_by_the_server_is_not_sent_again(
        trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[str]:
        await send_get(http, server, "/last")
        with pytest.raises(HttpConnectionError):
            await http.send("POST", server.url + "/json", {}, b"{}", 2.0, MAX_BYTES)
        return [request.method for request in server.requests]

    assert trial.run(scenario) == ["GET", "POST"]


def test_a_cancelled_request_gives_its_connection_back(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> HttpReply:
        hanging = asyncio.create_task(send_get(http, server, "/hang", timeout=10.0))
        await until(lambda: server.requests)
        hanging.cancel()
        [outcome] = await asyncio.gather(hanging, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)  # not a timeout
        return await send_get(http, server, "/json")

    assert trial.run(scenario, max_connections=1) == HttpReply(200, JSON)


def test_a_request_cancelled_just_as_it_was_given_a_connection_gives_it_back(
        trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> HttpReply:
        hanging = asyncio.create_task(send_get(http, server, "/hang", timeout=10.0))
        await until(lambda: server.requests)
        waiting = asyncio.create_task(send_get(http, server, "/json", timeout=10.0))
        await asyncio.sleep(0.05)  # waiting for the one connection
        hanging.cancel()  # hands the slot to `waiting`, which is cancelled before it runs
        asyncio.get_running_loop().call_soon(waiting.cancel)
        await asyncio.gather(hanging, waiting, return_exceptions=True)
        return await send_get(http, server, "/json")

    assert trial.run(scenario, max_connections=1) == HttpReply(200, JSON)


def test_an_idle_connection_past_its_keepalive_is_not_reused(
        trial: Trial, short_keepalive: float) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> int:
        await send_get(http, server, "/json")
        await asyncio.sleep(short_keepalive * 3)
        await send_get(http, server, "/json")
        return server.connections

    assert trial.run(scenario) == 2


def test_an_answer_of_another_status_keeps_its_connection_when_its_body_came_with_it(
        trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> int:
        for path in ("/missing", "/redirect", "/json"):
            await send_get(http, server, path)
        return server.connections

    assert trial.run(scenario) == 1


def test_a_get_closed_before_any_answer_is_tried_once_more_and_never_one_partly_answered(
        trial: Trial) -> None:
    """aiohttp tries an idempotent request once more on a connection closed with no answer,
    a new connection's too (RFC 9112, 9.3.1.1, allows it)."""
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> list[str]:
        with pytest.raises(HttpConnectionError):
            await send_get(http, server, "/drop")
        await send_get(http, server, "/json")
        with pytest.raises(HttpConnectionError):
            await send_get(http, server, "/cut")  # with part of an answer
        return [request.path for request in server.requests]

    assert trial.run(scenario) == ["/drop", "/drop", "/json", "/cut"]


def test_a_closed_client_refuses_requests(trial: Trial) -> None:
    async def scenario(server: LoopbackServer, http: AiohttpClient) -> None:
        await send_get(http, server, "/json")
        await http.aclose()
        with pytest.raises(HttpConnectionError):
            await send_get(http, server, "/json")

    trial.run(scenario)
