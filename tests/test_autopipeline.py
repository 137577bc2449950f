"""The auto-pipeline against the real Redis: commands of concurrent callers share one write,
each caller gets its own replies or its own error, and a dead or hung Redis fails the callers
within the timeout instead of holding them; the next batch connects again."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import trustme
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ivr.redis.autopipeline import AutoPipeline
from ivr.redis.client import connect
from ivr.redis.embedded import EmbeddedRedis
from tests.servers import free_port
from tests.tls_proxy import TlsProxy


def test_concurrent_callers_share_one_batch_and_get_their_own_replies(redis_url) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(redis_url)

        async def caller(n: int) -> list[object]:
            key = f"test:autopipeline:{n}"
            return await pipeline.execute(("SET", key, f"v{n}", "EX", 60), ("GET", key),
                                          ("DEL", f"{key}:h"), ("HSET", f"{key}:h", "a", n),
                                          ("HGETALL", f"{key}:h"))

        replies = await asyncio.gather(*(caller(n) for n in range(50)))
        assert pipeline.batches == 1  # fifty callers, 250 commands, one write
        for n, (set_ok, value, _, added, flat) in enumerate(replies):
            assert (set_ok, value, added, flat) == ("OK", f"v{n}", 1, ["a", str(n)])
        # A caller that comes later goes in the next batch, on the same connection.
        assert await pipeline.execute(("GET", "test:autopipeline:7")) == ["v7"]
        assert pipeline.batches == 2
        await pipeline.close()

    asyncio.run(scenario())


def test_batches_in_flight_together_get_their_replies_in_order(redis_url) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(redis_url)
        await pipeline.execute(("PING",))  # connected: no batch waits for the connection
        results = []
        for round_ in range(20):  # each round a batch of its own, all on the wire at once
            results.append(asyncio.ensure_future(pipeline.execute(("ECHO", f"r{round_}"))))
            await asyncio.sleep(0)
        assert [r[0] for r in await asyncio.gather(*results)] == [f"r{n}" for n in range(20)]
        assert pipeline.batches == 21
        await pipeline.close()

    asyncio.run(scenario())


def test_an_error_reply_fails_its_caller_only(redis_url) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(redis_url)
        await pipeline.execute(("SET", "test:autopipeline:string", "x"))
        wrong, right = await asyncio.gather(
            pipeline.execute(("HGETALL", "test:autopipeline:string")),
            pipeline.execute(("GET", "test:autopipeline:string")), return_exceptions=True)
        assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
        assert right == ["x"]
        await pipeline.close()

    asyncio.run(scenario())


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(16)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_hung_redis_fails_every_caller_within_the_timeout(silent_server: str) -> None:
    async def scenario() -> list[object]:
        pipeline = AutoPipeline(silent_server, timeout=0.3)
        started = time.monotonic()
        results = await asyncio.gather(*(pipeline.execute(("GET", f"k{n}")) for n in range(5)),
                                       return_exceptions=True)
        assert time.monotonic() - started < 5  # bounded by the timeout, not by Redis
        await pipeline.close()
        return results

    assert all(isinstance(result, TimeoutError) for result in asyncio.run(scenario()))


def test_after_a_timeout_commands_fail_at_once_until_redis_answers_a_ping(
    silent_server: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook makes several round trips: on a hung Redis each waited its own timeout (a
    message 4.75 s). Once a batch has timed out, the next fail at once, sends included, until
    a PING is answered."""

    async def scenario() -> None:
        pipeline = AutoPipeline(silent_server, timeout=0.3)
        with pytest.raises(TimeoutError):
            await pipeline.execute(("GET", "k"))
        assert pipeline.hung
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="has not answered since"):
            await pipeline.execute(("GET", "k"))
        pipeline.send(("SET", "test:autopipeline:hung", "1"), what="write while hung")
        assert time.monotonic() - started < 0.1
        pipeline.url = redis_url  # Redis answers again (here: another one)
        while pipeline.hung:
            await asyncio.sleep(0.05)
        assert await pipeline.execute(("ECHO", "back")) == ["back"]
        await pipeline.close()

    with caplog.at_level("INFO", logger="ivr.autopipeline"):
        asyncio.run(scenario())
    assert "write while hung skipped: ConnectionError" in caplog.text
    assert "Redis answers again" in caplog.text


def test_an_unreachable_redis_fails_every_caller_then_a_batch_connects_when_it_is_back(
    redis_url
) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(f"redis://127.0.0.1:{free_port()}")
        results = await asyncio.gather(*(pipeline.execute(("GET", f"k{n}")) for n in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError) for result in results), results
        pipeline.url = redis_url  # Redis is back (here: where it always was)
        assert await pipeline.execute(("ECHO", "back")) == ["back"]
        await pipeline.close()

    asyncio.run(scenario())


def test_a_dropped_connection_fails_the_batch_in_flight_and_the_next_one_reconnects(
    redis_url
) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(redis_url)
        [me] = await pipeline.execute(("CLIENT", "ID"))
        # Redis closes the connection after the kill's reply: the ECHO is never answered.
        with pytest.raises(RedisConnectionError):
            await pipeline.execute(("CLIENT", "KILL", "ID", me, "SKIPME", "no"), ("ECHO", "x"))
        [again] = await pipeline.execute(("CLIENT", "ID"))
        assert again != me  # a new connection
        # Killed from elsewhere (a restart, a failover) while idle: the drop is noticed, and
        # the next batch goes out on a new connection.
        other = AutoPipeline(redis_url)
        await other.execute(("CLIENT", "KILL", "ID", again))
        await other.close()
        await asyncio.sleep(0.2)
        assert await pipeline.execute(("ECHO", "fine")) == ["fine"]
        await pipeline.close()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_leaves_the_others_served_and_nothing_unretrieved(
    silent_server, caplog
) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(silent_server, timeout=0.3)
        impatient = asyncio.ensure_future(pipeline.execute(("GET", "a")))
        patient = asyncio.ensure_future(pipeline.execute(("GET", "b")))
        await asyncio.sleep(0.05)
        impatient.cancel()
        with pytest.raises(TimeoutError):
            await patient
        await pipeline.close()

    asyncio.run(scenario())
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_close_sends_what_is_queued_and_waits_for_it(redis_url) -> None:
    async def scenario() -> list[object]:
        pipeline = AutoPipeline(redis_url)
        pipeline.send(("SET", "test:autopipeline:last", "1"), what="test write")
        await pipeline.close()  # returns once the write was made
        check = AutoPipeline(redis_url)
        value = await check.execute(("GET", "test:autopipeline:last"))
        await check.close()
        return value

    assert asyncio.run(scenario()) == ["1"]


def test_a_write_sent_without_waiting_is_logged_only_when_it_fails(
    redis_url, silent_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`send` has no caller to tell: its failures (an error reply, a value Redis cannot take,
    an unreachable or hung Redis) are logged under its name, and a write that lands says
    nothing."""

    async def scenario() -> None:
        pipeline = AutoPipeline(redis_url)
        await pipeline.execute(("SET", "test:autopipeline:text", "x"))
        pipeline.send(("SET", "test:autopipeline:sent", "1"), what="landed write")
        pipeline.send(("HSET", "test:autopipeline:text", "a", "1"), what="wrong-type write")
        pipeline.send(("SET", "test:autopipeline:none", None), what="unsendable write")
        await pipeline.close()
        for url, what in ((f"redis://127.0.0.1:{free_port()}", "refused write"),
                          (silent_server, "hung write")):
            failing = AutoPipeline(url, timeout=0.3)
            failing.send(("SET", "test:autopipeline:lost", "1"), what=what)
            await failing.close()

    with caplog.at_level("WARNING", logger="ivr.autopipeline"):
        asyncio.run(scenario())
    skipped = {r.getMessage() for r in caplog.records if "skipped" in r.getMessage()}
    assert skipped == {"wrong-type write skipped: ResponseError",
                       "unsendable write skipped: ResponseError",
                       "refused write skipped: ConnectionError",
                       "hung write skipped: TimeoutError"}


def test_a_password_and_a_database_in_the_url_are_used(redis_url) -> None:
    async def scenario() -> None:
        admin = AutoPipeline(redis_url)
        await admin.execute(("ACL", "SETUSER", "pipeline-test", "on", ">s3cret", "~*", "+@all"))
        base = redis_url
        authenticated = (f"unix://pipeline-test:s3cret@{base.removeprefix('unix://')}?db=3"
                         if base.startswith("unix://") else
                         base.replace("redis://", "redis://pipeline-test:s3cret@") + "/3")
        pipeline = AutoPipeline(authenticated)
        assert await pipeline.execute(("SET", "test:autopipeline:db", "3")) == ["OK"]
        assert await admin.execute(("GET", "test:autopipeline:db")) == [None]  # not db 0
        wrong = AutoPipeline(authenticated.replace("s3cret", "wrong"))
        with pytest.raises(ResponseError, match="set-up"):
            await wrong.execute(("PING",))
        await admin.execute(("ACL", "DELUSER", "pipeline-test"))
        for each in (pipeline, wrong, admin):
            await each.close()

    asyncio.run(scenario())


def test_a_command_redis_cannot_take_fails_its_caller_only(redis_url) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(redis_url)
        bad, good = await asyncio.gather(pipeline.execute(("SET", "k", None)),
                                         pipeline.execute(("ECHO", "ok")),
                                         return_exceptions=True)
        assert isinstance(bad, ResponseError) and good == ["ok"]
        sent = pipeline.batches
        assert await pipeline.execute() == [] and pipeline.batches == sent  # nothing to send
        await pipeline.close()

    asyncio.run(scenario())


# --- the same connection options as redis-py ------------------------------------------------

class TlsRedis:
    """The session's Redis behind TLS proxies whose certificates a private CA issued: `plain`
    asks no client certificate, `mutual` requires one from the same CA. Files in `files`."""

    def __init__(self, redis_url: str, files: Path) -> None:
        ca, self.other_ca = trustme.CA(), trustme.CA()
        self.files = files
        ca.cert_pem.write_to_path(files / "ca.pem")
        self.other_ca.cert_pem.write_to_path(files / "other-ca.pem")
        client = ca.issue_cert("ivr-client@example.com")
        client.cert_chain_pems[0].write_to_path(files / "client.pem")
        client.private_key_pem.write_to_path(files / "client.key")
        server = ca.issue_cert("127.0.0.1")  # not localhost: for the host name check
        plain = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.configure_cert(plain)
        mutual = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.configure_cert(mutual)
        ca.configure_trust(mutual)
        mutual.verify_mode = ssl.CERT_REQUIRED
        self.plain = TlsProxy(redis_url, plain).start()
        self.mutual = TlsProxy(redis_url, mutual).start()

    def url(self, query: str, proxy: str = "plain", host: str = "127.0.0.1") -> str:
        port = (self.plain if proxy == "plain" else self.mutual).port
        return f"rediss://{host}:{port}?" + query.format(files=self.files)

    def stop(self) -> None:
        self.plain.stop()
        self.mutual.stop()


@pytest.fixture
def tls_redis(redis_url: str, tmp_path: Path) -> Iterator[TlsRedis]:
    proxies = TlsRedis(redis_url, tmp_path)
    yield proxies
    proxies.stop()


async def _reaches(connect_to: Callable[[], Awaitable[object]]) -> bool:
    """Whether a connection is made and answers, or (False) is refused as a connection error."""
    try:
        await connect_to()
    except RedisConnectionError:
        return False
    return True


async def _both_reach(url: str, key: str) -> tuple[bool, bool]:
    """Whether the queue store's client (redis-py) and the auto-pipeline each reach `url`:
    the pipeline writes `key`, redis-py reads it back."""
    pipeline = AutoPipeline(url)
    written = await _reaches(lambda: pipeline.execute(("SET", key, "through TLS")))
    await pipeline.close()
    client = connect(url)
    try:
        read = await _reaches(lambda: client.get(key))
        if read and written:
            assert await client.get(key) == "through TLS"
    finally:
        await client.aclose()
    return read, written


@pytest.mark.parametrize(("query", "proxy", "host", "reached"), [
    ("ssl_ca_certs={files}/ca.pem", "plain", "127.0.0.1", True),
    ("ssl_ca_certs={files}/other-ca.pem", "plain", "127.0.0.1", False),
    ("", "plain", "127.0.0.1", False),  # the system's CAs know nothing of a private one
    ("ssl_cert_reqs=none", "plain", "127.0.0.1", True),
    ("ssl_ca_certs={files}/ca.pem&ssl_check_hostname=true", "plain", "localhost", False),
    ("ssl_ca_certs={files}/ca.pem&ssl_check_hostname=false", "plain", "localhost", True),
    ("ssl_ca_certs={files}/ca.pem&ssl_certfile={files}/client.pem&ssl_keyfile={files}/client.key",
     "mutual", "127.0.0.1", True),
    ("ssl_ca_certs={files}/ca.pem", "mutual", "127.0.0.1", False),  # no client certificate
], ids=["private CA", "wrong CA", "system CAs", "no verification", "host name checked",
        "host name not checked", "client certificate", "client certificate missing"])
def test_the_pipeline_takes_a_rediss_url_as_redis_py_does(
    tls_redis: TlsRedis, query: str, proxy: str, host: str, reached: bool
) -> None:
    """Sessions, replays, caches and traces reach a Redis over TLS exactly when the queue
    store does: with a private CA, both work; with a wrong one, both refuse."""
    url = tls_redis.url(query, proxy, host)
    assert asyncio.run(_both_reach(url, f"test:autopipeline:tls:{proxy}")) == (reached, reached)


def test_credentials_and_a_client_name_in_the_url_reach_the_pipelines_connections(
    tmp_path: Path
) -> None:
    """A Redis with requirepass and an ACL user: the password in the address or in the query,
    a user and its password, the database (redis-py reads in it what the pipeline wrote) and
    the client name, as redis-py takes them."""
    server = EmbeddedRedis(tmp_path)
    server.start()
    socket_path = str(server.socket_path)
    try:
        with redis.Redis(unix_socket_path=socket_path) as admin:
            admin.acl_setuser("ivr-hot", enabled=True, passwords=["+user-secret"],
                              keys=["*"], commands=["+@all"])
            admin.config_set("requirepass", "s3cret")

        async def scenario() -> None:
            for url in (f"unix://:s3cret@{socket_path}",
                        f"unix://{socket_path}?password=s3cret",
                        f"unix://{socket_path}?username=default&password=s3cret&db=2",
                        f"unix://ivr-hot:user-secret@{socket_path}?db=5&client_name=ivr-hot-1"):
                assert await _both_reach(url, "test:autopipeline:auth") == (True, True), url
            for url in (f"unix://{socket_path}?password=wrong",
                        f"unix://ivr-hot:wrong@{socket_path}"):
                pipeline = AutoPipeline(url)
                with pytest.raises(ResponseError, match="set-up"):
                    await pipeline.execute(("PING",))
                await pipeline.close()
            pipeline = AutoPipeline(f"unix://ivr-hot:user-secret@{socket_path}?client_name=hot")
            assert await pipeline.execute(("CLIENT", "GETNAME"), ("ACL", "WHOAMI")) == [
                "hot", "ivr-hot"]
            await pipeline.close()

        asyncio.run(scenario())
    finally:
        server.stop()


def test_the_connect_timeout_in_the_url_bounds_a_hung_tls_handshake(silent_server: str) -> None:
    """A Redis that accepts but never completes TLS fails the callers within the URL's
    socket_connect_timeout, as redis-py's connections do, not only at the batch timeout."""
    url = silent_server.replace("redis://", "rediss://") + "?socket_connect_timeout=0.2"

    async def scenario() -> tuple[object, float]:
        pipeline = AutoPipeline(url, timeout=10)
        started = time.monotonic()
        [result] = await asyncio.gather(pipeline.execute(("PING",)), return_exceptions=True)
        elapsed = time.monotonic() - started
        await pipeline.close()
        return result, elapsed

    result, elapsed = asyncio.run(scenario())
    assert isinstance(result, RedisConnectionError) and elapsed < 5, (result, elapsed)


def test_a_url_redis_py_refuses_fails_the_callers_with_a_plain_error() -> None:
    async def scenario() -> list[object]:
        pipeline = AutoPipeline("rediss://127.0.0.1:1?ssl_cert_reqs=sometimes")
        results = await asyncio.gather(pipeline.execute(("PING",)), pipeline.execute(("PING",)),
                                       return_exceptions=True)
        await pipeline.close()
        return results

    for result in asyncio.run(scenario()):
        assert isinstance(result, RedisConnectionError)
        assert str(result).startswith("the Redis URL cannot be used: ")
