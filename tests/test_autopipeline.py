"""The auto-pipeline against the real Redis: commands of concurrent callers share one round
trip, each caller gets its own replies or its own error, and a dead or hung Redis fails the
callers within the timeout instead of holding them."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ivr.autopipeline import AutoPipeline
from tests.servers import free_port


def client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2)


def test_concurrent_callers_share_one_round_trip_and_get_their_own_replies(redis_url) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(client(redis_url))

        async def caller(n: int) -> list[object]:
            key = f"test:autopipeline:{n}"
            return await pipeline.execute(("SET", key, f"v{n}", "EX", 60), ("GET", key),
                                          ("HSET", f"{key}:h", "a", n), ("HGETALL", f"{key}:h"))

        replies = await asyncio.gather(*(caller(n) for n in range(50)))
        assert pipeline.batches == 1  # fifty callers, two hundred commands, one round trip
        for n, (set_ok, value, _, mapping) in enumerate(replies):
            assert set_ok is True and value == f"v{n}" and mapping == {"a": str(n)}
        # A caller that comes later goes in the next batch.
        assert await pipeline.execute(("GET", "test:autopipeline:7")) == ["v7"]
        assert pipeline.batches == 2
        await pipeline.client.aclose()

    asyncio.run(scenario())


def test_an_error_reply_fails_its_caller_only(redis_url) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(client(redis_url))
        await pipeline.execute(("SET", "test:autopipeline:string", "x"))
        wrong, right = await asyncio.gather(
            pipeline.execute(("HGETALL", "test:autopipeline:string")),
            pipeline.execute(("GET", "test:autopipeline:string")), return_exceptions=True)
        assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
        assert right == ["x"]
        await pipeline.client.aclose()

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
        pipeline = AutoPipeline(client(silent_server), timeout=0.3)
        started = time.monotonic()
        results = await asyncio.gather(*(pipeline.execute(("GET", f"k{n}")) for n in range(5)),
                                       return_exceptions=True)
        assert time.monotonic() - started < 5  # bounded by the timeout, not by Redis
        await pipeline.client.aclose()
        return results

    assert all(isinstance(result, TimeoutError) for result in asyncio.run(scenario()))


def test_an_unreachable_redis_fails_every_caller_with_a_connection_error() -> None:
    async def scenario() -> list[object]:
        pipeline = AutoPipeline(client(f"redis://127.0.0.1:{free_port()}"))
        results = await asyncio.gather(*(pipeline.execute(("GET", f"k{n}")) for n in range(5)),
                                       return_exceptions=True)
        await pipeline.client.aclose()
        return results

    assert all(isinstance(result, RedisConnectionError | OSError)
               for result in asyncio.run(scenario()))


def test_a_caller_that_gives_up_leaves_the_others_served_and_nothing_unretrieved(
    redis_url, silent_server, caplog
) -> None:
    async def scenario() -> None:
        pipeline = AutoPipeline(client(silent_server), timeout=0.3)
        impatient = asyncio.ensure_future(pipeline.execute(("GET", "a")))
        patient = asyncio.ensure_future(pipeline.execute(("GET", "b")))
        await asyncio.sleep(0.05)
        impatient.cancel()
        with pytest.raises(TimeoutError):
            await patient
        await pipeline.close()
        await pipeline.client.aclose()

    asyncio.run(scenario())
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_close_sends_what_is_queued(redis_url) -> None:
    async def scenario() -> str | None:
        pipeline = AutoPipeline(client(redis_url))
        write = asyncio.ensure_future(pipeline.execute(("SET", "test:autopipeline:last", "1")))
        await asyncio.sleep(0)  # queued, not yet sent
        await pipeline.close()
        assert write.done()  # close() returned once the write was made
        value = await pipeline.client.get("test:autopipeline:last")
        await pipeline.client.aclose()
        return value

    assert asyncio.run(scenario()) == "1"
