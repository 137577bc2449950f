"""The store: seeding once, versioned atomic writes, history, audit, rollback, and the
per-process cache that pub/sub keeps fresh on every instance."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import redis.asyncio

from ivr.flow_routes import LiveRoutes
from ivr.queues import Queue, QueueConfig
from ivr.redis.client import connect
from ivr.redis.flow_store import FlowStore
from ivr.redis.queue_store import (
    CHANGED_CHANNEL,
    CONFIG_VERSION_KEY,
    MUST_EXIST,
    MUST_NOT_EXIST,
    QUEUES_KEY,
    InvalidChange,
    QueueInUse,
    QueueNotFound,
    QueueStore,
    StaleVersion,
)
from tests import loyalty_api as L
from tests.twilio_client import FakeTwilio

T = TypeVar("T")
SHIPPED = QueueConfig.model_validate({"queues": {
    "gold": {"sip_uri": "sip:gold@queues.example.com"},
    "platinum": {"sip_uri": "sip:platinum@queues.example.com"},
    "standard": {"sip_uri": "sip:standard@queues.example.com"},
}})


def routes_of(store: QueueStore) -> LiveRoutes:
    """What routes to the queues of `store`: the live flows version in its Redis."""
    return LiveRoutes(FlowStore(store.redis))


def config(**uris: str) -> QueueConfig:
    return QueueConfig.model_validate({"queues": {n: {"sip_uri": u} for n, u in uris.items()}})


def with_store(redis_url: str, body: Callable[[QueueStore], Awaitable[T]], seed: bool = True) -> T:
    async def go() -> T:
        store = QueueStore(connect(redis_url))
        try:
            if seed:
                await store.seed_queues(SHIPPED)
            await store.refresh()
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_seeding_writes_an_empty_store_once_even_when_instances_race(redis_url: str) -> None:
    async def race() -> list[bool]:
        stores = [QueueStore(connect(redis_url)) for _ in range(8)]
        try:
            return await asyncio.gather(*(
                s.seed_queues(config(gold=f"sip:gold{i}@example.com"))
                for i, s in enumerate(stores)))
        finally:
            for s in stores:
                await s.close()

    results = asyncio.run(race())
    assert results.count(True) == 1
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        record = json.loads(client.hget(QUEUES_KEY, "gold"))
    assert record["sip_uri"] == f"sip:gold{results.index(True)}@example.com"
    assert record["version"] == 1 and record["updated_by"] == "seed"


def test_a_write_makes_a_new_version_with_history_and_audit(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        new = Queue(sip_uri="sip:gold@pbx2.example.com")
        written = await store.put("gold", new, who="alice")
        record = written.record
        assert (record.version, written.created, record.updated_by) == (2, False, "alice")
        assert written.changed == ["sip_uri"]
        assert store.queue("gold") == new
        history = (await store.history("gold", 100)).versions
        assert [(r.version, r.queue.sip_uri, r.updated_by) for r in history] == [
            (2, "sip:gold@pbx2.example.com", "alice"), (1, "sip:gold@queues.example.com", "seed")]
        entries, total = await store.audit()
        assert total == 1
        entry = entries[0]
        assert (entry["who"], entry["action"], entry["queue"], entry["version"]) == (
            "alice", "update", "gold", 2)
        assert entry["old"]["sip_uri"] == "sip:gold@queues.example.com"
        assert entry["new"]["sip_uri"] == "sip:gold@pbx2.example.com"

    with_store(redis_url, body)


def test_of_many_writers_with_the_same_version_exactly_one_wins(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        others = [QueueStore(connect(redis_url)) for _ in range(10)]

        async def attempt(i: int, s: QueueStore) -> int | None:
            try:
                written = await s.put("gold", Queue(sip_uri=f"sip:w{i}@x.com"), f"w{i}", "1")
                return written.record.version
            except StaleVersion as stale:
                assert stale.current_version == 2
                return None

        try:
            results = await asyncio.gather(*(attempt(i, s) for i, s in enumerate(others)))
        finally:
            for s in others:
                await s.close()
        assert [r for r in results if r is not None] == [2]
        winner = results.index(2)
        assert (await store.record("gold")).queue.sip_uri == f"sip:w{winner}@x.com"
        assert len((await store.history("gold", 100)).versions) == 2
        assert (await store.audit())[1] == 1

    with_store(redis_url, body)


def test_a_write_equal_to_the_current_queue_writes_no_version_no_audit_entry_no_message(
        redis_url: str) -> None:
    """Issue 15: `ivr queues set night --no-overflow` on a queue without an overflow made a
    version, and an audit entry saying no field changed."""
    night = Queue(sip_uri="sip:night@x.com", fallback_sip_uris=("sip:a@x.com", "sip:b@x.com"),
                  overflow="standard", message_to="+15550100104")

    async def body(store: QueueStore) -> None:
        await store.put("night", night, "bob")
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            config_version = client.get(CONFIG_VERSION_KEY)
        for if_match in (None, "1", MUST_EXIST):
            written = await store.put("night", Queue(**night.model_dump()), "alice", if_match)
            assert (written.changed, written.created) == ([], False)
            assert (written.record.version, written.record.updated_by) == (1, "bob")
        with pytest.raises(StaleVersion):  # If-Match is checked first, as for any write
            await store.put("night", night, "alice", if_match="7")
        with pytest.raises(StaleVersion):
            await store.put("night", night, "alice", if_match=MUST_NOT_EXIST)
        assert (await store.rollback("night", 1, "alice")).record.version == 1
        assert [r.version for r in (await store.history("night", 100)).versions] == [1]
        entries, total = await store.audit()
        assert total == 1 and entries[0]["action"] == "create"
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            assert client.get(CONFIG_VERSION_KEY) == config_version  # no instance reloads
        # The order of the fallbacks is part of the queue.
        swapped = night.model_copy(update={"fallback_sip_uris": ("sip:b@x.com", "sip:a@x.com")})
        written = await store.put("night", swapped, "alice")
        assert (written.record.version, written.changed) == (2, ["fallback_sip_uris"])

    with_store(redis_url, body)


def test_writers_racing_to_set_the_same_values_make_one_version(redis_url: str) -> None:
    """Whether a write changes anything is decided on the record current when it lands, not
    on the one each writer read."""
    async def body(store: QueueStore) -> None:
        writers = [QueueStore(connect(redis_url)) for _ in range(12)]
        new = Queue(sip_uri="sip:gold@pbx2.example.com")
        try:
            results = await asyncio.gather(*(
                writer.put("gold", new, f"w{i}") for i, writer in enumerate(writers)))
        finally:
            for writer in writers:
                await writer.close()
        assert {written.record.version for written in results} == {2}
        assert [bool(written.changed) for written in results].count(True) == 1
        assert len((await store.history("gold", 100)).versions) == 2
        assert (await store.audit())[1] == 1

    with_store(redis_url, body)


def test_rollback_makes_an_old_version_current_as_a_new_version(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        await store.put("gold", Queue(sip_uri="sip:gold@bad.example.com"), "bob")
        written = await store.rollback("gold", 1, "alice")
        assert (written.record.version, written.record.queue.sip_uri, written.created) == (
            3, "sip:gold@queues.example.com", False)
        entries, _ = await store.audit()
        assert entries[0]["action"] == "rollback" and entries[0]["rolled_back_to"] == 1
        with pytest.raises(QueueNotFound):
            await store.rollback("gold", 99, "alice")

    with_store(redis_url, body)


def test_overflow_must_name_a_queue_and_never_loop(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        with pytest.raises(InvalidChange, match="overflow 'nowhere' is not a queue"):
            await store.put("gold", Queue(sip_uri="sip:a@b.com", overflow="nowhere"), "a")
        await store.put("gold", Queue(sip_uri="sip:a@b.com", overflow="platinum"), "a")
        with pytest.raises(InvalidChange, match="overflow cycle"):
            await store.put("platinum", Queue(sip_uri="sip:a@b.com", overflow="gold"), "a")
        with pytest.raises(QueueInUse, match="overflow of gold"):
            await store.delete("platinum", "a", routes_of(store))

    with_store(redis_url, body)


def test_delete_refuses_a_queue_a_flow_routes_to_and_keeps_history(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        await FlowStore(store.redis).publish({"loyalty.yaml": "(a flow)"}, "a", "",
                                             routes={"gold": ["loyalty_routing"]})
        with pytest.raises(QueueInUse, match="routed to by flows version 1 .flow loyalty_routing"):
            await store.delete("gold", "a", routes_of(store))
        await store.put("spare", Queue(sip_uri="sip:spare@x.com"), "a")
        with pytest.raises(StaleVersion):
            await store.delete("spare", "a", routes_of(store), if_match="7")
        await store.delete("spare", "a", routes_of(store), if_match="1")
        assert await store.record("spare") is None and store.queue("spare") is None
        written = await store.put("spare", Queue(sip_uri="sip:spare2@x.com"), "a")
        assert written.created and written.record.version == 2  # versions are never reused
        with pytest.raises(QueueNotFound):
            await store.delete("ghost", "a", routes_of(store))

    with_store(redis_url, body)


def test_if_match_star_requires_an_existing_queue(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        with pytest.raises(QueueNotFound):
            await store.put("new", Queue(sip_uri="sip:n@x.com"), "a", if_match="*")
        written = await store.put("gold", Queue(sip_uri="sip:n@x.com"), "a", if_match="*")
        assert written.record.version == 2

    with_store(redis_url, body)


def test_another_instance_sees_a_change_through_pub_sub(redis_url: str) -> None:
    async def body(writer: QueueStore) -> None:
        reader = QueueStore(connect(redis_url))
        await reader.start()
        try:
            assert reader.queue("gold").sip_uri == "sip:gold@queues.example.com"
            await writer.put("gold", Queue(sip_uri="sip:gold@pbx2.example.com"), "a")
            deadline = time.monotonic() + 2
            while reader.queue("gold").sip_uri != "sip:gold@pbx2.example.com":
                assert time.monotonic() < deadline, "the change never reached the other instance"
                await asyncio.sleep(0.005)
        finally:
            await reader.close()

    with_store(redis_url, body)


def hgetall_calls(client: redis.Redis) -> int:
    """How many HGETALLs Redis ran since its stats were last reset."""
    return client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)


def test_starting_a_store_that_has_loaded_reads_the_queues_once_more_after_subscribing_only(
    redis_url: str,
) -> None:
    async def body(store: QueueStore) -> None:  # loaded already, as start-up does before start()
        with redis.Redis.from_url(redis_url) as client:
            client.config_resetstat()
            await store.start()
            deadline = time.monotonic() + 2
            while hgetall_calls(client) == 0:  # the listener's, closing the race with pub/sub
                assert time.monotonic() < deadline, "the listener never loaded the queues"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert hgetall_calls(client) == 1

    with_store(redis_url, body)


def test_a_corrupt_record_keeps_the_last_good_configuration(redis_url: str, caplog) -> None:
    async def body(store: QueueStore) -> None:
        await store.start()
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            client.hset(QUEUES_KEY, "gold", json.dumps({"sip_uri": "not a uri", "version": 9}))
            client.hset(QUEUES_KEY, "platinum", "{not json")
            client.publish(CHANGED_CHANNEL, client.incr(CONFIG_VERSION_KEY))
        deadline = time.monotonic() + 2
        while "queue 'platinum' in the store is invalid" not in caplog.text:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert store.queue("gold").sip_uri == "sip:gold@queues.example.com"
        assert store.queue("platinum").sip_uri == "sip:platinum@queues.example.com"
        assert [r.name for r in await store.records()] == ["standard"]

    with_store(redis_url, body)


def test_a_restart_keeps_the_live_configuration_not_the_file(
    redis_url: str, config_dir: Path, make_settings, start_server
) -> None:
    first = start_server(make_settings())
    assert "sip:gold@queues.example.com" in FakeTwilio(first.url).call(L.GOLD).text
    first.stop()
    with_store(redis_url, lambda s: s.put("gold", Queue(sip_uri="sip:gold@new-pbx.example.com"),
                                          "alice"), seed=False)
    queues_file = config_dir / "sip_config" / "queues.yaml"
    queues_file.write_text(queues_file.read_text().replace("sip:gold@", "sip:from-file@"))
    second = start_server(make_settings())
    assert "<Sip>sip:gold@new-pbx.example.com</Sip>" in FakeTwilio(second.url).call(L.GOLD).text


def test_a_running_server_routes_the_next_call_to_a_changed_queue(
    redis_url: str, twilio: FakeTwilio
) -> None:
    with_store(redis_url, lambda s: s.put(
        "platinum", Queue(sip_uri="sips:platinum@backup.example.com:5061"), "a"), seed=False)
    deadline = time.monotonic() + 2
    while "<Sip>sips:platinum@backup.example.com:5061</Sip>" not in twilio.call(L.PLATINUM).text:
        assert time.monotonic() < deadline


def test_a_route_to_a_queue_deleted_from_the_store_goes_to_the_fallback_queue(
    redis_url: str, make_settings, start_server
) -> None:
    twilio = FakeTwilio(start_server(make_settings()).url)
    # The live flows route to gold, so no delete through the store lets it go: it goes from
    # Redis itself, announced as a change is.
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.hdel(QUEUES_KEY, "gold")
        client.publish(CHANGED_CHANNEL, client.incr(CONFIG_VERSION_KEY))
    deadline = time.monotonic() + 2
    while "<Sip>sip:standard@queues.example.com</Sip>" not in twilio.call(L.GOLD).text:
        assert time.monotonic() < deadline


def test_writers_to_different_queues_at_once_all_succeed(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        writers = [QueueStore(connect(redis_url)) for _ in range(6)]
        try:
            results = await asyncio.gather(*(
                writers[i % 6].put(f"q{i}", Queue(sip_uri=f"sip:q{i}@x.com"), "w")
                for i in range(60)))
        finally:
            for s in writers:
                await s.close()
        assert all(written.created for written in results)
        assert len(await store.records()) == 63

    with_store(redis_url, body)


def test_a_corrupt_record_can_be_replaced_by_a_write(redis_url: str) -> None:
    async def body(store: QueueStore) -> None:
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            client.hset(QUEUES_KEY, "gold", "{not json")
            client.hset(QUEUES_KEY, "platinum", json.dumps({"sip_uri": "sip:p@x.com",
                                                            "version": None}))
        written = await store.put("gold", Queue(sip_uri="sip:fixed@x.com"), "a", if_match="1")
        assert written.record.version == 2
        written = await store.put("platinum", Queue(sip_uri="sip:fixed@x.com"), "a")
        assert written.record.version == 2
        assert (await store.audit())[0][1]["old"] is None  # the unreadable record is not copied

    with_store(redis_url, body)


def test_a_record_with_a_bad_version_does_not_stop_a_process_following_changes(
    redis_url: str,
) -> None:
    async def body(writer: QueueStore) -> None:
        reader = QueueStore(connect(redis_url))
        await reader.start()
        try:
            with redis.Redis.from_url(redis_url, decode_responses=True) as client:
                client.hset(QUEUES_KEY, "platinum", json.dumps({"sip_uri": "sip:p@x.com",
                                                                "version": None}))
                client.publish(CHANGED_CHANNEL, client.incr(CONFIG_VERSION_KEY))
            await writer.put("gold", Queue(sip_uri="sip:gold@later.example.com"), "a")
            deadline = time.monotonic() + 3
            while reader.queue("gold").sip_uri != "sip:gold@later.example.com":
                assert time.monotonic() < deadline, "the reader stopped following changes"
                await asyncio.sleep(0.01)
            assert reader.queue("platinum").sip_uri == "sip:platinum@queues.example.com"
        finally:
            await reader.close()

    with_store(redis_url, body)


def test_closing_a_store_while_it_follows_a_stream_of_changes_never_hangs(redis_url: str) -> None:
    """The listener refreshes on every change; a close that lands in a refresh (redis-py can
    swallow the cancellation there) must still end it. Before the fix 24 closes in 30 waited
    forever, and a server's shutdown with them."""

    async def change(publisher: redis.asyncio.Redis, stop: asyncio.Event) -> None:
        version = 0
        while not stop.is_set():
            version += 1
            await publisher.publish(CHANGED_CHANNEL, f"v{version}")
            await asyncio.sleep(0)

    async def close_while_changing(rounds: int) -> int:
        hung = 0
        publisher = connect(redis_url)
        for i in range(rounds):
            store = QueueStore(connect(redis_url))
            if i == 0:
                await store.seed_queues(config(gold="sip:gold@example.com"))
            await store.start()
            stop = asyncio.Event()
            changes = asyncio.ensure_future(change(publisher, stop))
            await asyncio.sleep(0.05 + (i % 5) * 0.02)
            done, _ = await asyncio.wait({asyncio.ensure_future(store.close())}, timeout=5)
            hung += not done
            stop.set()
            await changes
        await publisher.aclose()
        return hung

    # In a thread of its own: before the fix, the hung listeners kept asyncio.run from ending.
    hung: list[int] = []
    runner = threading.Thread(target=lambda: hung.append(asyncio.run(close_while_changing(15))),
                              daemon=True)
    runner.start()
    runner.join(120)
    assert hung == [0]
