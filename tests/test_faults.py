"""Faults under load, against real processes: every call is answered with a route, none is
lost, no 5xx, whatever the loyalty API or Redis does."""

from __future__ import annotations

import asyncio
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from ivr.queues import Queue
from ivr.redis.client import connect
from ivr.redis.embedded import EmbeddedRedis
from ivr.redis.queue_store import QueueStore
from tests import loyalty_api as L
from tests.servers import free_port
from tests.test_admin_page import post_sign_in
from tests.twilio_client import FakeTwilio, call_params

STANDARD = "sip:standard@queues.example.com"


async def place_calls(twilio: FakeTwilio, callers: list[str], spread: float = 0.0
                      ) -> list[httpx.Response]:
    """Place a call per caller, all in flight together (started `spread` seconds apart)."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=300)) as client:
        async def place(i: int, caller: str) -> httpx.Response:
            await asyncio.sleep(i * spread)
            return await twilio.apost(client, "/twilio/voice", call_params(caller))
        return list(await asyncio.gather(*(place(i, c) for i, c in enumerate(callers))))


def dialled(response: httpx.Response) -> str | None:
    assert response.status_code == 200, response.text
    sip = ET.fromstring(response.content).find("Dial/Sip")
    return None if sip is None else sip.text


@pytest.mark.parametrize(
    "caller", [L.HANGS, L.BROKEN, L.NOT_JSON], ids=["hanging", "500s", "garbage"])
def test_a_failing_loyalty_api_under_load_still_routes_every_call(
    make_settings, start_server, caller: str
) -> None:
    twilio = FakeTwilio(start_server(make_settings(decision_deadline=1.0)).url)
    started = time.monotonic()
    responses = asyncio.run(place_calls(twilio, [caller] * 100))
    assert [dialled(r) for r in responses] == [STANDARD] * 100
    assert time.monotonic() - started < 10


def test_a_refusing_loyalty_api_under_load_still_routes_every_call(make_settings, start_server):
    settings = make_settings(loyalty_api_url=f"http://127.0.0.1:{free_port()}")
    twilio = FakeTwilio(start_server(settings).url)
    responses = asyncio.run(place_calls(twilio, [L.GOLD] * 100))
    assert [dialled(r) for r in responses] == [STANDARD] * 100


def test_redis_killed_mid_load_and_restarted_loses_no_call_and_recovers(
    tmp_path: Path, make_settings, start_server
) -> None:
    redis_server = EmbeddedRedis(tmp_path / "own-redis")
    url = redis_server.start()
    try:
        twilio = FakeTwilio(start_server(make_settings(redis_url=url)).url)
        assert dialled(twilio.call(L.GOLD)) == "sip:gold@queues.example.com"

        async def scenario() -> list[httpx.Response]:
            load = asyncio.create_task(place_calls(
                twilio, [L.GOLD, L.PLATINUM, L.UNKNOWN] * 100, spread=0.01))
            await asyncio.sleep(0.8)
            redis_server._process.send_signal(signal.SIGKILL)  # noqa: SLF001 (the test owns it)
            redis_server._process.wait()  # noqa: SLF001
            await asyncio.sleep(0.8)
            redis_server.stop()
            redis_server.start()  # same data dir: the AOF brings the configuration back
            return await load

        responses = asyncio.run(scenario())
        expected = {L.GOLD: "sip:gold@queues.example.com",
                    L.PLATINUM: "sip:platinum@queues.example.com", L.UNKNOWN: STANDARD}
        routes = [dialled(r) for r in responses]
        assert len(routes) == 300 and None not in routes  # all answered, all with a <Dial>
        assert set(routes) <= set(expected.values())

        # Recovered: an admin change reaches the server again through pub/sub.
        async def change() -> None:
            store = QueueStore(connect(url))
            try:
                await store.put("gold", Queue(sip_uri="sip:gold@after.example.com"), "test")
            finally:
                await store.close()

        asyncio.run(change())
        deadline = time.monotonic() + 15
        while dialled(twilio.call(L.GOLD)) != "sip:gold@after.example.com":
            assert time.monotonic() < deadline, "the server never recovered its Redis"
            time.sleep(0.2)
    finally:
        redis_server.stop()


def test_admin_requests_answer_503_at_once_while_redis_hangs_or_is_down(
    tmp_path: Path, make_settings, start_server, monkeypatch
) -> None:
    """The admin API and page wait a bounded time for Redis and say what happened; they hung
    for minutes (a hung Redis) or answered a bare 500 (a dead one). Calls route all along."""
    monkeypatch.setattr("ivr.admin.outage.STORE_TIMEOUT", 1.0)
    token = "faults-admin-token-0123456789"
    redis_server = EmbeddedRedis(tmp_path / "own-redis")
    url = redis_server.start()
    process = redis_server._process  # the test owns it
    assert process is not None
    try:
        server = start_server(make_settings(redis_url=url, admin_token=token))
        twilio = FakeTwilio(server.url)
        api = httpx.Client(base_url=f"{server.url}/admin/api", timeout=30,
                           headers={"Authorization": f"Bearer {token}"})
        page = httpx.Client(base_url=server.url, timeout=30)
        assert post_sign_in(page, "", token).status_code in (200, 303)  # signed in, by token
        assert api.get("/queues/gold").status_code == 200

        process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = api.patch("/queues/gold", json={"sip_uri": "sip:gold@hung.example.com"})
            assert answer.status_code == 503, answer.text
            assert "did not answer within 1 s" in answer.json()["error"]
            assert "history" in answer.json()["error"]
            assert time.monotonic() - started < 10  # the bound, not redis-py's retries
            shown = page.get("/admin/queues/gold")
            assert shown.status_code == 503 and "Redis is not answering" in shown.text
            # A read is told that nothing could be read, not that a change may still land.
            read = api.get("/queues")
            assert read.status_code == 503
            assert "nothing could be read" in read.json()["error"]
            assert "history" not in read.json()["error"]
            assert dialled(twilio.call(L.UNKNOWN)) == STANDARD
        finally:
            process.send_signal(signal.SIGCONT)

        process.send_signal(signal.SIGKILL)
        process.wait()
        answer = api.get("/queues/gold")
        assert answer.status_code == 503, answer.text
        assert "Redis is unreachable" in answer.json()["error"]
        assert dialled(twilio.call(L.UNKNOWN)) == STANDARD
    finally:
        redis_server.stop()
