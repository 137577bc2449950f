"""State writes Redis did not take, against the real Redis: contact memory kept (merged, within
its bound) and written once Redis answers; sessions and retry records counted lost."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from prometheus_client import REGISTRY
from redis.exceptions import ResponseError

from ivr.redis.autopipeline import AutoPipeline
from ivr.redis.state_writes import StateWrites, contact_commands
from tests.servers import free_port

TTL = 86400


def lost(kind: str) -> float:
    return REGISTRY.get_sample_value("ivr_state_writes_lost_total", {"kind": kind}) or 0.0


def test_contact_memory_is_kept_merged_within_its_bound_and_written_when_redis_answers(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = {kind: lost(kind) for kind in ("contact", "session", "retry_record")}

    async def scenario() -> None:
        pipeline = AutoPipeline(f"redis://127.0.0.1:{free_port()}")  # refused: Redis is down
        writes = StateWrites(pipeline, TTL, max_kept=2)
        # A first visit, sent without waiting, then a later one saving a field, waited for.
        writes.send(*contact_commands("+15550000301", {"last_seen": "2026-01-01T09:00:00Z"},
                                      "2026-01-01T09:00:00Z", TTL))
        assert not await writes.execute(
            *contact_commands("+15550000301", {"last_seen": "2026-01-01T10:00:00Z",
                                               "language": "french"}, None, TTL),
            ("SET", "ivr:session:messaging:+15005550006:+15550000301", "{}", "EX", 600))
        writes.send(*contact_commands("+15550000302", {"last_seen": "2026-01-01T11:00:00Z"},
                                      "2026-01-01T11:00:00Z", TTL),
                    ("SET", "ivr:replay:token", "<Response/>", "EX", 900, "NX"))
        # Over the bound: counted lost.
        writes.send(*contact_commands("+15550000303", {"last_seen": "2026-01-01T12:00:00Z"},
                                      "2026-01-01T12:00:00Z", TTL))
        await asyncio.sleep(0.1)  # the sends' failures come back
        pipeline.url = redis_url  # Redis answers again
        while writes._retrying is not None:  # noqa: SLF001 (what the test waits for)
            await asyncio.sleep(0.05)
        await writes.close()
        await pipeline.close()

    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        with caplog.at_level("INFO", logger="ivr.state_writes"):
            asyncio.run(scenario())
        assert client.hgetall("ivr:contact:+15550000301") == {
            "first_seen": "2026-01-01T09:00:00Z", "last_seen": "2026-01-01T10:00:00Z",
            "language": "french"}
        assert client.hgetall("ivr:contact:+15550000302") == {
            "first_seen": "2026-01-01T11:00:00Z", "last_seen": "2026-01-01T11:00:00Z"}
        assert TTL - 60 < client.ttl("ivr:contact:+15550000302") <= TTL
        assert not client.exists("ivr:contact:+15550000303", "ivr:replay:token",
                                 "ivr:session:messaging:+15005550006:+15550000301")
    assert {kind: lost(kind) - before[kind] for kind in before} == {
        "contact": 1, "session": 1, "retry_record": 1}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith("Redis is not taking state writes"), said
    assert said[1] == ("Redis answers again: 2 contacts' memory written again; state writes "
                       "lost: 1 contact, 1 retry_record, 1 session "
                       "(ivr_state_writes_lost_total)")


def test_contact_memory_still_kept_when_the_process_stops_is_counted_lost(caplog) -> None:
    before = lost("contact")

    async def scenario() -> None:
        pipeline = AutoPipeline(f"redis://127.0.0.1:{free_port()}")
        writes = StateWrites(pipeline, TTL)
        assert not await writes.execute(*contact_commands(
            "+15550000311", {"last_seen": "2026-01-01T09:00:00Z"}, None, TTL))
        await writes.close()
        await pipeline.close()

    with caplog.at_level("INFO", logger="ivr.state_writes"):
        asyncio.run(scenario())
    assert lost("contact") - before == 1
    assert caplog.records[-1].getMessage() == (
        "stopping: 0 contacts' memory written again; state writes lost: 1 contact "
        "(ivr_state_writes_lost_total)")


def test_contact_memory_written_late_never_replaces_a_visit_recorded_meanwhile(
    redis_url: str
) -> None:
    """Replayed with HSET, the kept memory put an older visit and older saved fields over what
    another instance wrote once Redis answered again."""
    number = "+15550000321"

    async def scenario(client: redis.Redis) -> None:
        pipeline = AutoPipeline(f"redis://127.0.0.1:{free_port()}")  # refused: Redis is down
        writes = StateWrites(pipeline, TTL)
        assert not await writes.execute(*contact_commands(
            number, {"last_seen": "1767258000", "language": "english"}, "1767258000", TTL))
        # Another instance records a later visit, with another answer, before the replay.
        client.hset(f"ivr:contact:{number}",
                    mapping={"last_seen": str(int(time.time()) + 60), "language": "french"})
        pipeline.url = redis_url
        while writes._retrying is not None:  # noqa: SLF001 (what the test waits for)
            await asyncio.sleep(0.05)
        await writes.close()
        await pipeline.close()

    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        asyncio.run(scenario(client))
        memory = client.hgetall(f"ivr:contact:{number}")
        assert memory["language"] == "french" and memory["first_seen"] == "1767258000"
        assert int(memory["last_seen"]) > time.time()
        assert TTL - 60 < client.ttl(f"ivr:contact:{number}") <= TTL


def test_contact_memory_refused_by_a_replica_during_a_failover_is_kept_not_lost(
    redis_url: str
) -> None:
    """READONLY (a master demoted by a failover) is "not now": it was counted lost, as a bug."""
    number = "+15550000322"
    before = lost("contact")

    async def scenario() -> None:
        pipeline = AutoPipeline(redis_url)
        writes = StateWrites(pipeline, TTL)
        writes.failed(tuple(contact_commands(number, {"last_seen": "1767258000"}, "1767258000",
                                             TTL)),
                      ResponseError("READONLY You can't write against a read only replica."))
        while writes._retrying is not None:  # noqa: SLF001 (what the test waits for)
            await asyncio.sleep(0.05)
        await writes.close()
        await pipeline.close()

    asyncio.run(scenario())
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.hgetall(f"ivr:contact:{number}") == {
            "first_seen": "1767258000", "last_seen": "1767258000"}
    assert lost("contact") == before
