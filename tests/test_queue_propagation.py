"""Propagation proportional to the change: a change to one queue makes every other process read
that queue alone; a gap (a lost message) or an older release's message still reloads them all;
a write checks itself against this process's queues while they are at the live version.

What Redis is asked is seen with MONITOR (the clients' commands, not the write script's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio

from ivr.queues import Queue, QueueConfig
from ivr.redis.client import connect
from ivr.redis.queue_store import (
    CHANGED_CHANNEL,
    CONFIG_VERSION_KEY,
    QUEUES_KEY,
    InvalidChange,
    QueueStore,
)
from tests.test_queue_store import routes_of

MANY = QueueConfig.model_validate({"queues": {
    f"q{i}": {"sip_uri": f"sip:q{i}@queues.example.com"} for i in range(200)}})
QUEUE_READS = ("HGET", "HGETALL", "HMGET", "HSCAN")

Commands = Callable[[], Awaitable[list[str]]]


@contextlib.asynccontextmanager
async def redis_commands(redis_url: str) -> AsyncIterator[Commands]:
    """A function answering the commands clients sent Redis since the block began (scripts'
    own commands left out), up to the moment it is called."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    seen: list[str] = []
    try:
        async with client.monitor() as monitor:
            async def until_now() -> list[str]:
                marker = f"monitor-mark-{uuid.uuid4().hex}"
                await client.exists(marker)
                while True:
                    command = await monitor.next_command()
                    if command["command"] == f"EXISTS {marker}":
                        return list(seen)
                    if command["client_type"] != "lua":
                        seen.append(command["command"])

            yield until_now
    finally:
        await client.aclose()


def queue_reads(commands: list[str]) -> list[str]:
    return [c for c in commands if c.split(" ", 1)[0] in QUEUE_READS]


async def reads_for(redis_url: str, change: Awaitable[object], arrived: Callable[[], bool]
                    ) -> list[str]:
    """The reads of queues that clients made from `change` until the other process shows it
    (`arrived`)."""
    async with redis_commands(redis_url) as commands:
        await change
        await wait_for(arrived, "the change never reached the other process before the recheck")
        return queue_reads(await commands())


async def following_store(redis_url: str) -> QueueStore:
    """A started store whose listener has subscribed and read the queues."""
    store = QueueStore(connect(redis_url))
    await store.refresh()  # as start-up does before start()
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        await client.config_resetstat()
        await store.start()
        await wait_for_async(lambda: hgetall_calls(client), "the listener never read the queues")
    return store


async def hgetall_calls(client: redis.asyncio.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def wait_for_async(count: Callable[[], Awaitable[int]], failure: str) -> None:
    deadline = time.monotonic() + 2
    while not await count():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.01)


async def wait_for(condition: Callable[[], bool], failure: str, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.005)


def with_stores(redis_url: str, body: Callable[[QueueStore, QueueStore], Awaitable[None]]) -> None:
    """A writer (loaded, not following) and a reader following changes, on 200 seeded queues."""
    async def go() -> None:
        writer = QueueStore(connect(redis_url))
        await writer.seed_queues(MANY)
        await writer.refresh()
        reader = await following_store(redis_url)
        try:
            await body(writer, reader)
        finally:
            await reader.close()
            await writer.close()

    asyncio.run(go())


def test_a_change_to_one_queue_makes_another_process_read_that_queue_alone(
        redis_url: str) -> None:
    async def body(writer: QueueStore, reader: QueueStore) -> None:
        assert await reads_for(
            redis_url, writer.put("q7", Queue(sip_uri="sip:q7@pbx2.example.com"), "alice"),
            lambda: reader.queue("q7").sip_uri == "sip:q7@pbx2.example.com",
        ) == ["HGET {ivr}:queues q7"]
        assert reader.queue("q8").sip_uri == "sip:q8@queues.example.com"
        assert len(reader.queue_names()) == 200

    with_stores(redis_url, body)


def test_a_deleted_queue_goes_from_another_process_with_that_queue_read_alone(
        redis_url: str) -> None:
    async def body(writer: QueueStore, reader: QueueStore) -> None:
        assert await reads_for(
            redis_url, writer.delete("q7", "alice", routes_of(writer)),
            lambda: reader.queue("q7") is None,
        ) == ["HGET {ivr}:queues q7"]
        assert len(reader.queue_names()) == 199

    with_stores(redis_url, body)


def test_a_lost_change_message_makes_the_next_one_reload_every_queue(redis_url: str) -> None:
    """The recheck would find it within 5 s; the next message, naming the version after the
    lost one, finds it at once."""
    async def body(writer: QueueStore, reader: QueueStore) -> None:
        async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as client:
            # A change whose message never arrived (as when the listener's connection dropped).
            await client.hset(QUEUES_KEY, "q3", json.dumps(
                {"sip_uri": "sip:q3@lost.example.com", "version": 2}))
            await client.incr(CONFIG_VERSION_KEY)
        await writer.refresh()  # the writer knows it: only the reader's reads are counted
        assert await reads_for(
            redis_url, writer.put("q7", Queue(sip_uri="sip:q7@pbx2.example.com"), "alice"),
            lambda: reader.queue("q3").sip_uri == "sip:q3@lost.example.com",
        ) == ["HGETALL {ivr}:queues"]
        assert reader.queue("q7").sip_uri == "sip:q7@pbx2.example.com"

    with_stores(redis_url, body)


def test_a_bare_version_message_from_an_older_release_reloads_every_queue(
        redis_url: str) -> None:
    async def body(writer: QueueStore, reader: QueueStore) -> None:
        async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as client:
            await client.hset(QUEUES_KEY, "q3", json.dumps(
                {"sip_uri": "sip:q3@old.example.com", "version": 2}))
            version = await client.incr(CONFIG_VERSION_KEY)
            assert await reads_for(
                redis_url, client.publish(CHANGED_CHANNEL, version),
                lambda: reader.queue("q3").sip_uri == "sip:q3@old.example.com",
            ) == ["HGETALL {ivr}:queues"]

    with_stores(redis_url, body)


def test_a_process_reads_nothing_for_its_own_change(redis_url: str) -> None:
    async def body(writer: QueueStore, reader: QueueStore) -> None:
        async def own_change_then_another() -> None:
            await reader.put("q7", Queue(sip_uri="sip:q7@pbx2.example.com"), "alice")
            await writer.refresh()  # the writer follows nothing: it reads the reader's change
            await writer.put("q8", Queue(sip_uri="sip:q8@pbx2.example.com"), "alice")

        # The reader's next message comes after its own: it has handled that one by then.
        assert await reads_for(
            redis_url, own_change_then_another(),
            lambda: reader.queue("q8").sip_uri == "sip:q8@pbx2.example.com",
        ) == ["HGETALL {ivr}:queues", "HGET {ivr}:queues q8"]

    with_stores(redis_url, body)


def test_a_write_at_the_live_version_reads_no_queue(redis_url: str) -> None:
    """Validation uses this process's queues while they are at the live version: the write's
    cost does not grow with the number of queues."""
    async def body(writer: QueueStore, reader: QueueStore) -> None:
        async with redis_commands(redis_url) as commands:
            await reader.put("q7", Queue(sip_uri="sip:q7@x.com", overflow="q8"), "alice")
            await reader.put("q9", Queue(sip_uri="sip:q9@x.com"), "alice")
            with pytest.raises(InvalidChange, match="overflow cycle q8 -> q7 -> q8"):
                await reader.put("q8", Queue(sip_uri="sip:q8@x.com", overflow="q7"), "alice")
            assert queue_reads(await commands()) == []

    with_stores(redis_url, body)


def test_a_write_from_a_process_behind_the_live_version_checks_the_live_queues(
        redis_url: str) -> None:
    """The writer has not seen the reader's changes (it follows nothing): its overflow checks
    are made against the queues as Redis has them, not as it last saw them."""
    async def body(writer: QueueStore, reader: QueueStore) -> None:
        await reader.put("night", Queue(sip_uri="sip:night@x.com"), "alice")
        await reader.put("q1", Queue(sip_uri="sip:q1@x.com", overflow="q2"), "alice")
        written = await writer.put("q5", Queue(sip_uri="sip:q5@x.com", overflow="night"), "bob")
        assert written.record.queue.overflow == "night"
        await reader.put("q6", Queue(sip_uri="sip:q6@x.com"), "alice")
        with pytest.raises(InvalidChange, match="overflow cycle q2 -> q1 -> q2"):
            await writer.put("q2", Queue(sip_uri="sip:q2@x.com", overflow="q1"), "bob")

    with_stores(redis_url, body)
