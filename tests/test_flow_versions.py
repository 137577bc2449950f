"""Published flow versions: the store, the live version every process follows, sessions pinned
to the version they started on, and what a process starts with."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from ivr.app import StartupError, open_store
from ivr.flow_versions import FlowChecks, FlowsRefused, LiveFlows, publish, rollback
from ivr.flows.loader import FlowSet
from ivr.queues import QueueConfig
from ivr.redis.client import connect
from ivr.redis.flow_store import NO_VERSION, FlowStore, StaleLive
from ivr.redis.queue_store import QueueStore
from ivr.settings import Settings
from tests.conftest import Served, run_ivr
from tests.servers import ServerThread, free_port
from tests.test_sessions import (
    CALLER,
    MENU_FLOW,
    MENU_NUMBER,
    QUEUES,
    STORED_ASKING,
    STORED_HANDED_OFF,
    dial_result,
    sip,
)
from tests.twilio_client import FakeTwilio, call_params, message_params

CHECKS = FlowChecks(secrets=(), settings=Settings(_env_file=None).flow_settings())
# A flow that needs a secret the test servers do not have.
CRM_FLOW = """
trigger: {channels: [voice], numbers: ["+15005550100"]}
fallback_queue: standard
steps:
  lookup: {kind: fetch, url: "https://crm.invalid/{{ secrets.crm_token }}", next: done, on_error: done}
  done: {kind: route, queue: gold}
"""
# What the menu flow becomes in a later version: its question renamed, "1" now means platinum.
RENAMED_MENU_FLOW = (MENU_FLOW.replace("  menu:\n", "  choose:\n")
                     .replace('gold: ["1", "gold"], platinum: ["2", "platinum"]',
                              'gold: ["2", "gold"], platinum: ["1", "platinum"]'))


@pytest.fixture
def menu_only(config_dir: Path) -> Path:
    flows = config_dir / "flows"
    for extra in flows.glob("*.yaml"):
        extra.unlink()
    (flows / "menu.yaml").write_text(MENU_FLOW)
    (config_dir / "sip_config" / "queues.yaml").write_text(QUEUES)
    return flows


def run(redis_url: str, operation: Callable[[FlowStore, QueueStore], Any]) -> Any:
    """`operation` on the flow and queue stores of `redis_url`, as another instance would."""
    async def go() -> Any:
        queues = QueueStore(connect(redis_url))
        try:
            return await operation(FlowStore(queues.redis), queues)
        finally:
            await queues.close()
    return asyncio.run(go())


def publish_files(redis_url: str, files: dict[str, str], who: str = "alice") -> int:
    published = run(redis_url, lambda flows, queues: publish(
        flows, queues, CHECKS, files, who, "a test"))
    return published.version.version  # type: ignore[no-any-return]


def wait_for_version(server: ServerThread, version: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        served = httpx.get(f"{server.url}/readyz").json().get("flow_version")
        if served == version:
            return
        assert time.monotonic() < deadline, f"still serving version {served}, not {version}"
        time.sleep(0.02)


def asked_at(twiml: str) -> str:
    gather = ET.fromstring(twiml).find("Gather")
    assert gather is not None, twiml
    return gather.find("Say").text or ""  # type: ignore[union-attr]


# --- the store ---------------------------------------------------------------------------------

def test_a_publish_is_a_new_version_and_the_same_content_again_is_none(
    redis_url: str, menu_only: Path
) -> None:
    files = {"menu.yaml": MENU_FLOW}
    _seed_queues(redis_url)
    assert publish_files(redis_url, files) == 1
    again = run(redis_url, lambda flows, queues: publish(flows, queues, CHECKS, files, "bob", ""))
    assert (again.created, again.version.version, again.version.who) == (False, 1, "alice")
    assert publish_files(redis_url, {"menu.yaml": RENAMED_MENU_FLOW}, "bob") == 2
    # Any name a flows directory can hold: a space too.
    assert publish_files(redis_url, {"menu choice.yaml": MENU_FLOW}, "bob") == 3
    versions = run(redis_url, lambda flows, queues: flows.versions(100)).versions
    assert [(v.version, v.who, v.action) for v in versions] == [
        (3, "bob", "publish"), (2, "bob", "publish"), (1, "alice", "publish")]
    assert run(redis_url, lambda flows, queues: flows.live_version()) == 3


def test_a_publish_and_a_rollback_are_audited_and_a_rollback_is_a_new_version(
    redis_url: str, menu_only: Path
) -> None:
    _seed_queues(redis_url)
    publish_files(redis_url, {"menu.yaml": MENU_FLOW})
    publish_files(redis_url, {"menu.yaml": RENAMED_MENU_FLOW})
    back = run(redis_url, lambda flows, queues: rollback(flows, queues, CHECKS, 1, "carol"))
    assert (back.created, back.version.version, back.version.rolled_back_to) == (True, 3, 1)
    assert run(redis_url, lambda flows, queues: flows.files(3)) == {"menu.yaml": MENU_FLOW}
    entries, _ = run(redis_url, lambda flows, queues: queues.audit())
    assert [(e["action"], e["flows_version"], e["who"]) for e in entries] == [
        ("flows_rollback", 3, "carol"), ("flows_publish", 2, "alice"),
        ("flows_publish", 1, "alice")]
    assert entries[0]["rolled_back_to"] == 1


def test_a_publish_that_expected_another_live_version_writes_nothing(
    redis_url: str, menu_only: Path
) -> None:
    _seed_queues(redis_url)
    publish_files(redis_url, {"menu.yaml": MENU_FLOW})
    with pytest.raises(StaleLive) as stale:
        run(redis_url, lambda flows, queues: flows.publish(
            {"menu.yaml": RENAMED_MENU_FLOW}, "bob", "", expected_live=NO_VERSION))
    assert stale.value.live == 1
    assert run(redis_url, lambda flows, queues: flows.live_version()) == 1


def test_a_publish_routing_to_a_queue_that_is_not_live_is_refused_naming_it(
    redis_url: str, menu_only: Path
) -> None:
    _seed_queues(redis_url)
    broken = MENU_FLOW.replace("queue: platinum", "queue: platnum")
    with pytest.raises(FlowsRefused) as refused:
        publish_files(redis_url, {"menu.yaml": broken})
    assert refused.value.problems == [
        "menu.yaml: steps.to_platinum.queue: 'platnum' is not a queue: did you mean 'platinum'?"]
    assert run(redis_url, lambda flows, queues: flows.live_version()) == 0


def _seed_queues(redis_url: str) -> None:
    config = QueueConfig.model_validate(yaml.safe_load(QUEUES))
    run(redis_url, lambda flows, queues: queues.seed_queues(config))


def count_file_reads(flows: FlowStore) -> list[int]:
    """The versions whose files `flows` reads from now on, in order, as a list that grows."""
    read: list[int] = []
    files = flows.files

    async def counted(version: int) -> dict[str, str] | None:
        read.append(version)
        return await files(version)

    flows.files = counted  # type: ignore[method-assign]
    return read


def test_webhooks_pinned_to_a_version_not_at_hand_wait_for_one_load_of_it(
    redis_url: str, menu_only: Path
) -> None:
    _seed_queues(redis_url)
    publish_files(redis_url, {"menu.yaml": MENU_FLOW})
    publish_files(redis_url, {"menu.yaml": RENAMED_MENU_FLOW})

    async def go(flows: FlowStore, queues: QueueStore) -> None:
        read = count_file_reads(flows)
        live = LiveFlows(flows, CHECKS, FlowSet(version=2))
        loaded = await asyncio.gather(*(live.pinned(1) for _ in range(20)))
        assert read == [1] and all(each is loaded[0] for each in loaded)
        assert "menu" in loaded[0].flows["menu"].steps
        assert await live.pinned(1) is loaded[0] and read == [1]  # kept

    run(redis_url, go)


def test_a_live_version_this_process_cannot_load_is_not_read_again_at_every_recheck(
    redis_url: str, menu_only: Path
) -> None:
    _seed_queues(redis_url)
    publish_files(redis_url, {"menu.yaml": MENU_FLOW})
    run(redis_url, lambda flows, queues: flows.publish(
        {"menu.yaml": MENU_FLOW, "crm.yaml": CRM_FLOW}, "dan", ""))

    async def go(flows: FlowStore, queues: QueueStore) -> None:
        read = count_file_reads(flows)
        live = LiveFlows(flows, CHECKS, FlowSet(version=1))
        for _ in range(3):
            await live.resync()
        assert (read, live.current.version) == ([2], 1)
        await live.changed("2")  # announced again (published anew): tried again
        assert read == [2, 2]

    run(redis_url, go)


# --- every process follows the live version; a session finishes on its own -------------------

def test_a_call_at_a_question_finishes_on_its_version_after_a_publish_renames_the_step(
    menu_only: Path, make_settings: Callable[..., Settings],
    start_server: Callable[[Settings], ServerThread], redis_url: str
) -> None:
    server = start_server(make_settings())
    twilio = FakeTwilio(server.url)
    waiting = call_params(CALLER, To=MENU_NUMBER)
    assert "Press 1 for gold" in asked_at(twilio.post("/twilio/voice", waiting).text)
    assert publish_files(redis_url, {"menu.yaml": RENAMED_MENU_FLOW}) == 2
    wait_for_version(server, 2)
    answered = twilio.post("/twilio/voice?turn=1", {**waiting, "Digits": "1"})
    assert sip(answered.text)[0] == "sip:gold@queues.example.com"  # version 1's "1"
    new = call_params(CALLER, To=MENU_NUMBER)
    twilio.post("/twilio/voice", new)
    routed = twilio.post("/twilio/voice?turn=1", {**new, "Digits": "1"})
    assert sip(routed.text)[0] == "sip:platinum@queues.example.com"  # version 2's "1"
    with redis.Redis.from_url(redis_url) as client:
        stored = json.loads(client.get(f"ivr:session:voice:{new['CallSid']}"))
    assert stored["flow_version"] == 2


def test_two_instances_switch_to_a_published_version_together(
    menu_only: Path, make_settings: Callable[..., Settings],
    start_server: Callable[[Settings], ServerThread], redis_url: str
) -> None:
    servers = [start_server(make_settings()), start_server(make_settings())]
    assert [httpx.get(f"{s.url}/readyz").json()["flow_version"] for s in servers] == [1, 1]
    publish_files(redis_url, {"menu.yaml": RENAMED_MENU_FLOW})
    for server in servers:
        wait_for_version(server, 2)
        twilio = FakeTwilio(server.url)
        new = call_params(CALLER, To=MENU_NUMBER)
        twilio.post("/twilio/voice", new)
        routed = twilio.post("/twilio/voice?turn=1", {**new, "Digits": "1"})
        assert sip(routed.text)[0] == "sip:platinum@queues.example.com"
    versions = run(redis_url, lambda flows, queues: flows.versions(100)).versions
    assert [v.version for v in versions] == [2, 1]  # the second instance seeded nothing


def test_a_session_whose_version_is_gone_goes_to_its_flows_fallback_queue_logged_once(
    menu_only: Path, make_settings: Callable[..., Settings],
    start_server: Callable[[Settings], ServerThread], redis_url: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(make_settings())
    twilio = FakeTwilio(server.url)
    pinned_to_a_lost_version = STORED_ASKING[:-1] + ',"flow_version":41}'
    with redis.Redis.from_url(redis_url) as client:
        calls = [call_params(CALLER, To=MENU_NUMBER) for _ in range(2)]
        for params in calls:
            client.set(f"ivr:session:voice:{params['CallSid']}", pinned_to_a_lost_version, ex=60)
    with caplog.at_level(logging.INFO):
        for params in calls:
            answered = twilio.post("/twilio/voice?turn=1", {**params, "Digits": "1"})
            assert answered.status_code == 200
            assert sip(answered.text)[0] == "sip:standard@queues.example.com"
    told = [r for r in caplog.records if "flows version 41" in r.getMessage()]
    assert len(told) == 1 and told[0].exc_info is None
    metrics = httpx.get(f"{server.url}/metrics").text
    assert ('ivr_fallbacks_total{channel="voice",flow="menu",reason="missing_version"} 2.0'
            in metrics)


LOST_VERSION = ',"flow_version":41}'  # a version the store never had


def test_a_dial_that_fails_for_a_call_on_a_lost_version_runs_the_live_flows_unanswered_step(
    menu_only: Path, make_settings: Callable[..., Settings],
    start_server: Callable[[Settings], ServerThread], redis_url: str
) -> None:
    twilio = FakeTwilio(start_server(make_settings()).url)
    routed = STORED_HANDED_OFF.replace('"routed_to":"gold"', '"routed_to":null')[:-1]
    calls = [call_params(CALLER, To=MENU_NUMBER) for _ in range(2)]
    with redis.Redis.from_url(redis_url) as client:
        for params in calls:
            client.set(f"ivr:session:voice:{params['CallSid']}", routed + LOST_VERSION, ex=60)
    unanswered = dial_result(twilio, calls[0], "platinum", 0, "busy")
    root = ET.fromstring(unanswered.text)
    assert root.find("Say").text == "Everyone is busy. We will call you back."  # type: ignore[union-attr]
    assert root.find("Dial") is None
    # The last target failed too: the apology, never the fallback queue dialled again.
    last = twilio.post("/twilio/voice/dial?queue=platinum&try=0&last=1",
                       {**calls[1], "DialCallStatus": "failed"})
    root = ET.fromstring(last.text)
    assert root.find("Dial") is None and root.find("Hangup") is not None


def test_a_conversation_handed_off_on_a_lost_version_stays_with_its_queue(
    menu_only: Path, make_settings: Callable[..., Settings],
    start_server: Callable[[Settings], ServerThread], redis_url: str
) -> None:
    twilio = FakeTwilio(start_server(make_settings()).url)
    sender = "+15550000083"
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"ivr:session:messaging:{MENU_NUMBER}:{sender}",
                   STORED_HANDED_OFF[:-1] + LOST_VERSION, ex=60)
    forwarded = twilio.post("/twilio/messaging",
                            message_params(sender, "still there?", To=MENU_NUMBER))
    [message] = ET.fromstring(forwarded.text).findall("Message")
    assert message.get("to") == "+15550100101"  # gold's, not the fallback queue's
    assert message.text == f"{sender} chose gold: still there?"


def test_a_process_that_cannot_serve_a_published_version_keeps_serving_its_own(
    menu_only: Path, make_settings: Callable[..., Settings],
    start_server: Callable[[Settings], ServerThread], redis_url: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(make_settings())
    # Published by an instance where the secret is set; this one has none.
    with caplog.at_level(logging.ERROR):
        run(redis_url, lambda flows, queues: flows.publish(
            {"menu.yaml": RENAMED_MENU_FLOW, "crm.yaml": CRM_FLOW}, "dan", ""))
        deadline = time.monotonic() + 10
        while not any("cannot serve it" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert httpx.get(f"{server.url}/readyz").json()["flow_version"] == 1
    twilio = FakeTwilio(server.url)
    assert "Press 1 for gold" in asked_at(
        twilio.post("/twilio/voice", call_params(CALLER, To=MENU_NUMBER)).text)


# --- start-up -----------------------------------------------------------------------------------

def test_start_up_serves_the_live_version_and_warns_of_a_draft_that_differs(
    menu_only: Path, make_settings: Callable[..., Settings], redis_url: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    assert opened_version(settings) == 1  # an empty store: seeded from the files
    (menu_only / "menu.yaml").write_text(RENAMED_MENU_FLOW)
    with caplog.at_level(logging.WARNING):
        assert opened_version(settings) == 1
    assert any("differ from the live version 1" in r.getMessage()
               and "ivr flows publish" in r.getMessage() for r in caplog.records)
    caplog.clear()
    (menu_only / "menu.yaml").write_text(MENU_FLOW.replace("queue: platinum", "queue: platnum"))
    with caplog.at_level(logging.WARNING):
        assert opened_version(settings) == 1
    [warning] = [r.getMessage() for r in caplog.records if "differ from" in r.getMessage()]
    assert "are broken" in warning and "steps.to_platinum.queue" in warning
    assert run(redis_url, lambda flows, queues: flows.files(1)) == {"menu.yaml": MENU_FLOW}


def test_start_up_refuses_a_live_version_this_instance_cannot_serve(
    menu_only: Path, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    _seed_queues(redis_url)
    files = {"menu.yaml": MENU_FLOW, "crm.yaml": CRM_FLOW}
    run(redis_url, lambda flows, queues: flows.publish(files, "erin", ""))
    with pytest.raises(StartupError) as refused:
        opened_version(make_settings())
    assert "flows version 1 (live) cannot be served here: crm.yaml: steps.lookup.url: " \
        "secrets.crm_token is not set" in str(refused.value)


def opened_version(settings: Settings) -> int:
    async def go() -> int:
        store, flows = await open_store(settings)
        await store.close()
        return flows.version
    return asyncio.run(go())


# --- `ivr serve`'s start: each process loads one flow set at most ------------------------------

def serve_once(served: Callable[..., Served]) -> list[dict[str, Any]]:
    """`ivr serve` (one worker) started until ready, then stopped: its JSON log lines."""
    server = served(IVR_LOG_LEVEL="debug", IVR_LOG_FORMAT="json")
    deadline = time.monotonic() + 60
    while httpx.get(server.url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.1)
    assert server.stop() == 0
    return [json.loads(line) for line in server.log.read_text().splitlines()
            if line.startswith("{")]


def loads_by_process(lines: list[dict[str, Any]]) -> dict[int, int]:
    counted: dict[int, int] = {}
    for line in lines:
        if line["message"].startswith("flows loaded:"):
            counted[line["process"]] = counted.get(line["process"], 0) + 1
    return counted


def test_ivr_serve_loads_the_live_flows_once_in_all_its_processes(
    newcomer: tuple[Path, dict[str, str]], newcomer_serve: Callable[..., Served], redis_url: str
) -> None:
    """The `ivr serve` parent's check loaded the live version, and then its worker again: the
    start took two loads (6-7 s with 200 flows). A draft that differs was loaded by each
    process besides."""
    cwd, _ = newcomer
    served = functools.partial(newcomer_serve, IVR_REDIS_URL=redis_url)
    seeding = loads_by_process(serve_once(served))
    assert sorted(seeding.values()) == [1, 1]  # the seed checked, then served by the worker
    assert list(loads_by_process(serve_once(served)).values()) == [1]
    flow = cwd / "flows" / "loyalty_routing.yaml"
    flow.write_text(flow.read_text().replace("queue: platinum", "queue: gold"))
    lines = serve_once(served)
    assert sorted(loads_by_process(lines).values()) == [1, 1]  # the draft, in the parent
    [warning] = [line["message"] for line in lines if "differ from the live" in line["message"]]
    assert "ivr flows publish" in warning


def test_ivr_serve_refuses_a_live_version_its_workers_cannot_serve_naming_the_problem(
    newcomer: tuple[Path, dict[str, str]], redis_url: str
) -> None:
    cwd, env = newcomer
    _seed_queues(redis_url)
    run(redis_url, lambda flows, queues: flows.publish({"crm.yaml": CRM_FLOW}, "erin", ""))
    result = run_ivr(cwd, {**env, "IVR_REDIS_URL": redis_url}, "serve", "--port",
                     str(free_port()), "--workers", "2")
    assert result.returncode == 2
    assert result.stderr.rstrip().splitlines()[-1].startswith(
        "ivr: cannot start: flows version 1 (live) cannot be served here: crm.yaml: "
        "steps.lookup.url: secrets.crm_token is not set: set IVR_SECRET_CRM_TOKEN")
