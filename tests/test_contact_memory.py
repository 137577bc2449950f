"""Contact memory in Redis: compact (epoch seconds, the hash's small encoding) and readable in
every form it was ever stored in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import redis
import redis.asyncio as aioredis

from ivr.redis.autopipeline import AutoPipeline
from ivr.redis.conversations import Conversations
from ivr.timestamps import utc_iso

CALLER = "+15551230001"
KEY = f"ivr:contact:{CALLER}"
T = TypeVar("T")


def with_conversations(redis_url: str, use: Callable[[Conversations], Awaitable[T]]) -> T:
    async def scenario() -> T:
        pipeline = AutoPipeline(redis_url)
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await use(Conversations(client, pipeline, timedelta(days=365)))
        finally:
            await pipeline.close()
            await client.aclose()

    return asyncio.run(scenario())


async def visit(conversations: Conversations, number: str, fields: dict[str, str],
                known: bool = False) -> None:
    await conversations.pipeline.execute(
        *conversations.remember_commands(number, fields, visit=True, known=known))


def test_a_visit_is_stored_as_epoch_seconds_and_read_as_an_iso_time(redis_url: str) -> None:
    before = int(time.time())

    async def use(conversations: Conversations) -> dict[str, str]:
        await visit(conversations, CALLER, {"language": "fr-FR"})
        return await conversations.contact_memory(CALLER)

    memory = with_conversations(redis_url, use)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        stored = client.hgetall(KEY)
    assert stored["first_seen"] == stored["last_seen"]
    assert before <= int(stored["last_seen"]) <= time.time()
    iso = utc_iso(int(stored["last_seen"]))
    assert memory == {"first_seen": iso, "last_seen": iso, "language": "fr-FR"}


def test_a_contact_stored_as_iso_text_before_reads_as_it_did_and_keeps_its_first_visit(
        redis_url: str) -> None:
    old = {"first_seen": "2025-01-02T03:04:05+00:00", "last_seen": "2026-06-07T08:09:10+00:00",
           "usual_queue": "gold"}
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.hset(KEY, mapping=old)  # as the code before issue 18 wrote it

    async def use(conversations: Conversations) -> tuple[dict[str, str], dict[str, str]]:
        read_before = await conversations.contact_memory(CALLER)
        await visit(conversations, CALLER, {})  # a flow that does not read the memory
        return read_before, await conversations.contact_memory(CALLER)

    before, after = with_conversations(redis_url, use)
    assert before == old
    assert after["first_seen"] == old["first_seen"]
    assert after["usual_queue"] == "gold"
    assert after["last_seen"] > old["last_seen"] and after["last_seen"].endswith("+00:00")


def test_a_visit_value_that_is_no_epoch_time_is_read_as_it_is(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.hset(KEY, mapping={"first_seen": "99999999999999999999", "last_seen": "yesterday"})
    memory = with_conversations(redis_url, lambda c: c.contact_memory(CALLER))
    assert memory == {"first_seen": "99999999999999999999", "last_seen": "yesterday"}


def test_a_contact_takes_at_most_128_bytes_of_its_key_and_value(redis_url: str) -> None:
    # MEMORY USAGE: key, value and the hash's small encoding (168 bytes with ISO times).
    with_conversations(redis_url, lambda c: visit(c, CALLER, {}))
    with redis.Redis.from_url(redis_url) as client:
        assert client.object("encoding", KEY) in (b"ziplist", b"listpack")
        assert client.memory_usage(KEY) <= 128


def test_a_contact_with_a_long_saved_field_keeps_the_small_encoding(redis_url: str) -> None:
    note = "prefers a callback after 6 pm; speaks French and Dutch; account under the name of " \
           "the company, not the person; escalate billing questions to the account manager"
    assert 128 < len(note) <= 256
    with_conversations(redis_url, lambda c: visit(c, CALLER, {"note": note}))
    with redis.Redis.from_url(redis_url) as client:
        # Redis's default (values up to 64 bytes) made it a hash table: 2.5 times the memory.
        assert client.object("encoding", KEY) in (b"ziplist", b"listpack")
        assert client.memory_usage(KEY) <= 512
