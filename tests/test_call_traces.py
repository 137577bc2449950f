"""Call traces looked up by SID through the index kept beside them (ivr.redis.call_traces), on
the real Redis: among many traces, after trimming, across Redis forgetting the script, and with
traces a previous version wrote during a rolling upgrade."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis

from ivr.calltrace import CallTrace
from ivr.jsonfast import compact_json
from ivr.redis.call_traces import CALLS_KEY, INDEXED_FROM_KEY, SIDS_KEY, CallTraces

T = TypeVar("T")
PAGE = 1000  # traces recorded between two writes (below the writer's MAX_PENDING)


def sid_of(number: int) -> str:
    return f"CA{number:032d}"


def trace(sid: str, at: float | None = None, summary: str = "routed to gold") -> CallTrace:
    made = CallTrace("voice", "voice", sid, "+1*******567", at=at or time.time())
    made.finish(summary, 0.002)
    return made


def with_traces(redis_url: str, scenario: Callable[[aioredis.Redis, Callable[..., Awaitable[
        CallTraces]]], Awaitable[T]]) -> T:
    """Run `scenario` with a reader and a `write(traces, max_entries=, hours=)` that stores the
    traces through a writer of their own, as a server process does, and returns it."""

    async def go() -> T:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)

        async def write(traces: list[CallTrace], max_entries: int = 100_000,
                        hours: float = 1) -> CallTraces:
            writer = CallTraces(client, redis_url, max_entries=max_entries, hours=hours)
            writer.start()
            for start in range(0, len(traces), PAGE):
                for each in traces[start:start + PAGE]:
                    writer.record(each)
                await writer.close()  # writes what is queued
                writer.start()
            await writer.close()
            return writer

        try:
            return await scenario(client, write)
        finally:
            await client.aclose()

    return asyncio.run(go())


def old_version_entry(sid: str, number: int) -> str:
    """An entry as the previous version wrote it: the same JSON, no index."""
    entry = trace(sid).entry(f"0ld{number:05x}", "old-host:1")
    return compact_json(entry).decode()


async def bytes_sent(client: aioredis.Redis) -> int:
    return int((await client.info("stats"))["total_net_output_bytes"])


def test_a_call_is_found_by_sid_among_ten_thousand_traces_reading_its_own_only(
        redis_url: str) -> None:
    wanted = "CA" + "f" * 32

    async def scenario(client: aioredis.Redis, write: Callable[..., Awaitable[CallTraces]]
                       ) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
        start = time.time() - 600
        many = [trace(sid_of(n), at=start + n * 0.05, summary="x" * 200) for n in range(10_000)]
        # The call's three webhooks, spread among the others.
        many += [trace(wanted, at=start + offset) for offset in (10.0, 200.0, 400.0)]
        reader = await write(many)
        before = await bytes_sent(client)
        found = await reader.recent(10, sid=wanted)
        sent = await bytes_sent(client) - before
        return found, sent, await reader.recent(2, sid=wanted)

    found, sent, newest_two = with_traces(redis_url, scenario)
    assert [each["sid"] for each in found] == [wanted] * 3
    answered = [each["answered"] for each in found]
    assert answered == sorted(answered, reverse=True)
    assert newest_two == found[:2]
    # Read through all traces, the lookup sent over 2 MB (the INFO reply is in this too).
    assert sent < 20_000, sent


def test_a_trace_trimmed_by_count_or_age_leaves_the_index_with_it(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, write: Callable[..., Awaitable[CallTraces]]
                       ) -> tuple[list[str], set[str], list[list[dict[str, Any]]], int]:
        now = time.time()
        # Older than the hour kept: written and removed by the same write.
        await write([trace(sid_of(99), at=now - 7200)], max_entries=3)
        aged = await client.hkeys(SIDS_KEY)
        reader = await write([trace(sid_of(n), at=now + n) for n in range(5)], max_entries=3)
        indexed = set(await client.hkeys(SIDS_KEY))
        await write([trace(sid_of(2), at=now + 10)], max_entries=3)  # a second webhook
        lookups = [await reader.recent(10, sid=sid_of(n)) for n in (99, 0, 1, 2, 3, 4)]
        return aged, indexed, lookups, await client.zcard(CALLS_KEY)

    aged, indexed, lookups, kept = with_traces(redis_url, scenario)
    assert aged == [] and kept == 3
    assert indexed == {sid_of(2), sid_of(3), sid_of(4)}
    assert [len(found) for found in lookups] == [0, 0, 0, 1, 1, 1]
    assert lookups[3][0]["answered"] > lookups[5][0]["answered"]  # sid 2's second webhook


def test_traces_the_previous_version_wrote_are_found_by_sid_during_a_rolling_upgrade(
        redis_url: str) -> None:
    """Written before this version's first write, or by an instance not yet upgraded after it:
    no index names them, and the lookup reads them as the previous version did."""

    async def scenario(client: aioredis.Redis, write: Callable[..., Awaitable[CallTraces]]
                       ) -> list[list[str]]:
        now = time.time()
        await client.zadd(CALLS_KEY, {old_version_entry(sid_of(n), n): now - 60 + n
                                      for n in range(3)})
        reader = await write([trace(sid_of(10), at=now)])
        # An instance of the previous version, still serving, writes after this one.
        await client.zadd(CALLS_KEY, {old_version_entry(sid_of(11), 11): now + 1})
        return [[each["id"] for each in await reader.recent(10, sid=sid_of(n))]
                for n in (0, 2, 10, 11, 12)]

    found = with_traces(redis_url, scenario)
    assert found[0] == ["0ld00000"] and found[1] == ["0ld00002"] and found[3] == ["0ld0000b"]
    assert len(found[2]) == 1 and not found[2][0].startswith("0ld")
    assert found[4] == []


def test_a_store_that_held_no_traces_never_reads_them_all_for_an_unknown_sid(
        redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, write: Callable[..., Awaitable[CallTraces]]
                       ) -> tuple[str | None, list[dict[str, Any]], int]:
        start = time.time() - 600
        reader = await write([trace(sid_of(n), at=start + n * 0.05, summary="x" * 200)
                              for n in range(3000)])
        before = await bytes_sent(client)
        found = await reader.recent(10, sid=sid_of(999_999))
        return await client.get(INDEXED_FROM_KEY), found, await bytes_sent(client) - before

    indexed_from, found, sent = with_traces(redis_url, scenario)
    assert indexed_from == "0" and found == []
    assert sent < 20_000, sent


def test_references_to_traces_a_previous_version_trimmed_are_swept(redis_url: str) -> None:
    """A writer of the previous version trims by rank without the index: the references it
    leaves are dropped by this version's next writes, and by a lookup of their SID."""

    async def scenario(client: aioredis.Redis, write: Callable[..., Awaitable[CallTraces]]
                       ) -> tuple[set[str], set[str], list[dict[str, Any]]]:
        now = time.time()
        reader = await write([trace(sid_of(n), at=now - 100 + n) for n in range(30)])
        await client.zremrangebyrank(CALLS_KEY, 0, 9)  # the previous version's trim
        looked_up = await reader.recent(10, sid=sid_of(0))
        after_lookup = set(await client.hkeys(SIDS_KEY))
        for n in range(3):  # the sweep goes through the index as traces are written
            await write([trace(sid_of(100 + n), at=now + n)])
        return after_lookup, set(await client.hkeys(SIDS_KEY)), looked_up

    after_lookup, after_writes, looked_up = with_traces(redis_url, scenario)
    assert looked_up == []
    assert sid_of(0) not in after_lookup and sid_of(1) in after_lookup
    assert after_writes == {sid_of(n) for n in range(10, 30)} | {sid_of(100 + n)
                                                                    for n in range(3)}


def test_traces_are_written_and_indexed_after_redis_forgets_the_script(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, write: Callable[..., Awaitable[CallTraces]]
                       ) -> list[dict[str, Any]]:
        reader = await write([trace(sid_of(1))])
        await client.script_flush()  # as a restarted Redis has
        await write([trace(sid_of(2))])
        await client.script_flush()
        return await reader.recent(10, sid=sid_of(2))

    assert [each["sid"] for each in with_traces(redis_url, scenario)] == [sid_of(2)]


def test_the_same_entry_written_twice_is_indexed_once(redis_url: str) -> None:
    """A write cut short is made again by the last try: its entries keep one reference each."""

    async def scenario(client: aioredis.Redis, write: Callable[..., Awaitable[CallTraces]]
                       ) -> tuple[str, list[dict[str, Any]]]:
        writer = CallTraces(client, redis_url, max_entries=100, hours=1)
        writer.record(trace(sid_of(7)))
        queued = list(writer._pending)
        await writer._write(time.time(), queued)
        await writer._write(time.time(), queued)
        await writer.close()
        return await client.hget(SIDS_KEY, sid_of(7)) or "", await writer.recent(10, sid_of(7))

    references, found = with_traces(redis_url, scenario)
    assert len(references.split()) == 1 and len(found) == 1
