"""Observability over real servers: /readyz through a Redis outage, /metrics (one process and
`ivr serve --workers 2`), JSON logs, and call traces in the admin API, `ivr calls tail` and the
admin page."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ivr.app import create_app
from ivr.calltrace import MAX_ANSWER_LENGTH, CallTrace, shown_answer
from ivr.flows.model import Flow
from ivr.flows.steps.ask import AskStep
from ivr.logs import formatter, mask_number
from ivr.metrics import (
    FALLBACK_DEADLINE,
    FALLBACK_ERROR,
    FALLBACK_REASONS,
    FALLBACK_REDIS,
    count_failures_from_zero,
    exposition,
)
from ivr.redis.call_traces import CALLS_KEY, WRITE_INTERVAL, CallTraces
from ivr.redis.embedded import EmbeddedRedis
from ivr.settings import Settings
from tests import loyalty_api as L
from tests.conftest import IVR, Served, clean_env
from tests.servers import ServerThread
from tests.twilio_client import FakeTwilio, call_params, message_params

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
GOLD_DIAL = "<Sip>sip:gold@queues.example.com</Sip>"
TEAM_CHOICE = "+15005550102"  # flows/team_choice.yaml: "sales or support?", then a route
VIP_BY_EMAIL = "+15005550101"  # flows/vip_by_email.yaml (messaging): asks for an email
CUSTOMER = "+15550000077"


def eventually(probe: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    """`probe()` once it is truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {probe}")
        time.sleep(every)


def samples(metrics_text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def sample(metrics_text: str, name: str, **labels: str) -> float:
    return samples(metrics_text).get((name, frozenset(labels.items())), 0.0)


def traces(server: ServerThread | Served, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(server.url + "/admin/api/calls", params=params, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["calls"]


def trace_of(server: ServerThread, sid: str) -> dict[str, Any]:
    """The stored trace of `sid` (written in the background: may take a moment)."""
    return eventually(lambda: traces(server, sid=sid))[0]


@pytest.fixture
def server(make_settings: Callable[..., Settings],
           start_server: Callable[[Settings], ServerThread]) -> ServerThread:
    return start_server(make_settings(admin_token=ADMIN))


# --- /readyz ------------------------------------------------------------------------------------

def test_readyz_is_ready_while_the_store_answers_and_flows_are_loaded(server: ServerThread) -> None:
    response = httpx.get(server.url + "/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["store"] == "ok" and response.json()["flows"] >= 1
    assert httpx.get(server.url + "/healthz").text == "ok"


def test_readyz_is_degraded_while_redis_is_down_calls_still_route_and_it_recovers(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    tmp_path: Path,
) -> None:
    own_redis = EmbeddedRedis(tmp_path / "own")
    server = start_server(make_settings(redis_url=own_redis.start()))

    def store_up() -> float:
        return sample(httpx.get(server.url + "/metrics").text, "ivr_store_up")

    try:
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert store_up() == 1
        own_redis.stop()

        degraded = eventually(lambda: (r := httpx.get(server.url + "/readyz")).status_code == 503
                              and r.json())
        assert degraded["status"] == "degraded" and degraded["store"] == "unreachable"
        eventually(lambda: store_up() == 0)
        call = FakeTwilio(server.url).call(L.GOLD)
        assert call.status_code == 200 and "<Dial" in call.text and "<Sip>sip:" in call.text

        own_redis = EmbeddedRedis(tmp_path / "own")  # the same data dir, so the same socket
        own_redis.start()
        eventually(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        assert store_up() == 1
        assert GOLD_DIAL in FakeTwilio(server.url).call(L.GOLD).text
    finally:
        own_redis.stop()


def test_readyz_answers_degraded_within_a_second_while_redis_hangs(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    tmp_path: Path,
) -> None:
    """A hung Redis (stopped, its connections open) is found by /readyz's PING, bounded by
    READY_PING_TIMEOUT, and a probe gets its answer in time."""
    own_redis = EmbeddedRedis(tmp_path / "own")
    server = start_server(make_settings(redis_url=own_redis.start()))
    assert own_redis.pid is not None
    try:
        assert httpx.get(server.url + "/readyz").status_code == 200
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = httpx.get(server.url + "/readyz", timeout=10)
            took = time.monotonic() - started
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        assert response.status_code == 503 and response.json()["store"] == "unreachable"
        assert took < 5  # READY_PING_TIMEOUT is 0.5 s; wide, for a loaded machine
        eventually(lambda: httpx.get(server.url + "/readyz").status_code == 200)
    finally:
        own_redis.stop()


# --- /metrics -----------------------------------------------------------------------------------

def test_metrics_count_webhook_latency_routes_and_signature_rejections(
    server: ServerThread,
) -> None:
    before = httpx.get(server.url + "/metrics").text
    twilio = FakeTwilio(server.url)
    assert GOLD_DIAL in twilio.call(L.GOLD).text
    assert twilio.message(L.PLATINUM).status_code == 200
    forged = FakeTwilio(server.url, token="someone-elses-token").call(L.GOLD)
    assert forged.status_code == 403

    response = httpx.get(server.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("ivr_webhook_seconds_count", endpoint="voice") == 1
    assert grew("ivr_webhook_seconds_count", endpoint="messaging") == 1
    assert grew("ivr_webhook_seconds_bucket", endpoint="voice", le="+Inf") == 1
    assert grew("ivr_routes_total", channel="voice", flow="loyalty_routing", queue="gold") == 1
    assert grew("ivr_routes_total", channel="messaging", flow="loyalty_routing",
                queue="platinum") == 1
    assert grew("ivr_signature_rejections_total", endpoint="voice") == 1


def test_a_route_decided_after_the_hold_prompt_is_counted_once_and_traced(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
) -> None:
    server = start_server(make_settings(admin_token=ADMIN, hold_after=0.3, decision_deadline=1.5))
    twilio = FakeTwilio(server.url)
    params = call_params(L.HANGS)
    sid = params["CallSid"]
    before = httpx.get(server.url + "/metrics").text
    held = twilio.post("/twilio/voice", params, follow=False)
    assert "<Redirect" in held.text
    # The decision goes on: the API hangs, the deadline routes to the fallback queue.
    assert "sip:standard@" in twilio.post("/twilio/voice?held=1", params, follow=False).text

    def routed() -> float:
        after = httpx.get(server.url + "/metrics").text
        return (sample(after, "ivr_routes_total", channel="voice", flow="loyalty_routing",
                       queue="standard")
                - sample(before, "ivr_routes_total", channel="voice", flow="loyalty_routing",
                         queue="standard"))

    # Once: counted as the decision ended, not again by the redirect that handed it out.
    assert routed() == 1
    entries = eventually(lambda: (found := traces(server, sid=sid)) and len(found) >= 3 and found)
    decided = [entry for entry in entries if entry["summary"].startswith("decided after")]
    assert len(decided) == 1, [entry["summary"] for entry in entries]
    assert decided[0]["route"] == "standard" and decided[0]["flow"] == "loyalty_routing"
    assert decided[0]["steps"][0] == "lookup"
    assert decided[0]["fetches"]["lookup"]["outcome"] == "timeout"
    assert decided[0]["duration_ms"] >= 1000  # from the call's arrival to the decision
    assert any(entry["summary"].startswith("on hold") for entry in entries)


def test_metrics_count_fetches_cache_hits_and_the_breaker_opening(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
) -> None:
    # A loyalty API of its own: metrics are per process, and other tests' breakers on the shared
    # API's upstream are in this one.
    with ServerThread(L.LoyaltyApi().app()) as api:
        server = start_server(make_settings(loyalty_api_url=api.url))
        upstream = api.url.removeprefix("http://")

        def total(text: str, name: str, **labels: str) -> float:
            return sample(text, name, upstream=upstream, **labels)

        twilio = FakeTwilio(server.url)
        before = httpx.get(server.url + "/metrics").text
        assert GOLD_DIAL in twilio.call(L.GOLD).text  # a lookup
        assert GOLD_DIAL in twilio.call(L.GOLD).text  # the cached answer (`cache: 5m`)
        after = httpx.get(server.url + "/metrics").text

        def grew(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert grew("ivr_fetches_total", outcome="ok") == 1
        assert grew("ivr_fetch_seconds_count") == 1
        assert grew("ivr_fetch_cache_total", result="miss") == 1
        assert grew("ivr_fetch_cache_total", result="hit") == 1
        assert total(after, "ivr_breaker_state") == 0  # closed

        # 500s are faults (and not cached): after 5 in a row the circuit opens, and the next
        # lookup is not even tried.
        for _ in range(5):
            twilio.call(L.BROKEN)
        opened = httpx.get(server.url + "/metrics").text
        assert total(opened, "ivr_breaker_state") == 2  # open
        twilio.call(L.BROKEN)
        last = httpx.get(server.url + "/metrics").text
        assert total(last, "ivr_fetches_total", outcome="breaker_open") - total(
            opened, "ivr_fetches_total", outcome="breaker_open") == 1


def test_metrics_of_two_workers_add_up_to_every_call(newcomer_serve: Callable[..., Served]
                                                      ) -> None:
    server = newcomer_serve("--workers", "2")  # IVR_LOG_FORMAT is `auto`: JSON to a file
    token = (server.cwd / "var" / "local_twilio_auth_token").read_text().strip()
    twilio = FakeTwilio(server.url, token=token)
    calls = 40  # on a busy machine one worker once took all of 12
    for _ in range(calls):  # a new connection each: the workers share them out
        assert GOLD_DIAL in twilio.call(L.GOLD).text

    for _ in range(4):  # whichever worker answers the scrape counts every worker's calls
        metrics = httpx.get(server.url + "/metrics").text
        assert sample(metrics, "ivr_routes_total", channel="voice", flow="loyalty_routing",
                      queue="gold") == calls
        assert sample(metrics, "ivr_webhook_seconds_count", endpoint="voice") == calls

    server.stop()
    log_lines = server.log.read_text().splitlines()
    entries = [json.loads(line) for line in log_lines if not line.startswith("ivr: ")]
    answered = [entry for entry in entries if entry.get("call_sid")]
    assert len(answered) == calls
    assert len({entry["process"] for entry in answered}) == 2, "one worker answered every call"


# --- /metrics: what goes wrong inside flows -----------------------------------------------------

GREETING = "+15005550199"  # GREETING_FLOW's number
# Greets the caller by the name the loyalty API gives: a published flow that works for every
# caller a developer tried, and raises in `greet` for one the API does not know (no name).
GREETING_FLOW = """
name: greeting
trigger: {channels: [voice], numbers: ["+15005550199"]}
fallback_queue: standard
steps:
  lookup:
    kind: fetch
    url: "{{ settings.loyalty_api_url }}/customers/{{ contact.number | urlencode }}"
    save: {name: name}
    next: greet
    on_error: greet
  greet: {kind: say, text: "Hello {{ vars.name.title() }}.", next: to_gold}
  to_gold: {kind: route, queue: gold}
"""


def scrape(server: ServerThread) -> str:
    return httpx.get(server.url + "/metrics").text


def grown(before: str, after: str, name: str, **labels: str) -> float:
    """How much the sample `name{labels}` grew between two scrapes."""
    return sample(after, name, **labels) - sample(before, name, **labels)


def fallbacks_grown(before: str, after: str, channel: str, flow: str) -> dict[str, float]:
    """ivr_fallbacks_total's growth for `flow` on `channel`, by reason (those that grew)."""
    grew = {reason: grown(before, after, "ivr_fallbacks_total", channel=channel, flow=flow,
                          reason=reason) for reason in FALLBACK_REASONS}
    return {reason: count for reason, count in grew.items() if count}


def test_a_step_that_raises_is_counted_by_flow_and_step_and_as_an_error_fallback(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    config_dir: Path,
) -> None:
    (config_dir / "flows" / "greeting.yaml").write_text(GREETING_FLOW)
    server = start_server(make_settings(admin_token=ADMIN))
    twilio = FakeTwilio(server.url)
    before = scrape(server)
    known = call_params(L.GOLD, To=GREETING)
    assert GOLD_DIAL in twilio.post("/twilio/voice", known).text
    assert fallbacks_grown(before, scrape(server), "voice", "greeting") == {}

    unknown = call_params(L.UNKNOWN, To=GREETING)
    assert "sip:standard@" in twilio.post("/twilio/voice", unknown).text
    after = scrape(server)
    assert grown(before, after, "ivr_flow_errors_total", flow="greeting", step="greet") == 1
    assert fallbacks_grown(before, after, "voice", "greeting") == {FALLBACK_ERROR: 1}
    # The trace keeps saying why in words.
    assert trace_of(server, unknown["CallSid"])["fallback_reason"] == (
        "UndefinedError in step 'greet'")


def test_a_decision_past_its_deadline_is_counted_as_a_deadline_fallback(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    tmp_path: Path,
) -> None:
    """Redis hangs while the lookup reads the fetch cache: the decision deadline passes first."""
    own_redis = EmbeddedRedis(tmp_path / "own")
    server = start_server(make_settings(redis_url=own_redis.start(), decision_deadline=0.2))
    assert own_redis.pid is not None
    try:
        before = scrape(server)
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            call = FakeTwilio(server.url).call(L.GOLD)
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        assert "sip:standard@" in call.text
        after = scrape(server)
        assert fallbacks_grown(before, after, "voice", "loyalty_routing") == {
            FALLBACK_DEADLINE: 1}
        assert grown(before, after, "ivr_flow_errors_total", flow="loyalty_routing",
                     step="lookup") == 0
    finally:
        own_redis.stop()


def test_a_question_asked_without_a_session_store_is_counted_as_a_redis_fallback(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    tmp_path: Path,
) -> None:
    own_redis = EmbeddedRedis(tmp_path / "own")
    server = start_server(make_settings(redis_url=own_redis.start()))
    own_redis.stop()
    before = scrape(server)
    answer = FakeTwilio(server.url).post("/twilio/voice", call_params(CUSTOMER, To=TEAM_CHOICE))
    assert "<Gather" not in answer.text and "sip:support@" in answer.text
    assert fallbacks_grown(before, scrape(server), "voice", "team_choice") == {FALLBACK_REDIS: 1}


def test_a_webhook_that_fails_around_its_flow_is_counted_as_an_error_fallback(
    server: ServerThread, redis_url: str,
) -> None:
    """A session that cannot be read (not JSON) fails the webhook before its flow runs."""
    twilio = FakeTwilio(server.url)
    params = call_params(CUSTOMER, To=TEAM_CHOICE)
    assert "<Gather" in twilio.post("/twilio/voice", params).text
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"ivr:session:voice:{params['CallSid']}", "{not json")
    before = scrape(server)
    assert "sip:support@" in answer_call(twilio, params, 1, Digits="1")
    after = scrape(server)
    assert fallbacks_grown(before, after, "voice", "team_choice") == {FALLBACK_ERROR: 1}
    assert grown(before, after, "ivr_flow_errors_total", flow="team_choice", step="menu") == 0


def test_a_redirect_after_hold_without_its_decision_counts_a_deadline_or_redis_fallback(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    tmp_path: Path,
) -> None:
    """Twilio's redirect after the hold prompt finds no decision: none came in time (say, the
    instance that made it died), or Redis could not be asked for it."""
    own_redis = EmbeddedRedis(tmp_path / "own")
    server = start_server(make_settings(redis_url=own_redis.start(), decision_deadline=0.3))
    twilio = FakeTwilio(server.url)
    try:
        before = scrape(server)
        never_held = twilio.post("/twilio/voice?held=1", call_params(L.GOLD), follow=False)
        assert "sip:standard@" in never_held.text
        after = scrape(server)
        assert fallbacks_grown(before, after, "voice", "loyalty_routing") == {
            FALLBACK_DEADLINE: 1}

        own_redis.stop()
        unreachable = twilio.post("/twilio/voice?held=1", call_params(L.GOLD), follow=False)
        assert "sip:standard@" in unreachable.text
        assert fallbacks_grown(after, scrape(server), "voice", "loyalty_routing") == {
            FALLBACK_REDIS: 1}
    finally:
        own_redis.stop()


def test_a_loaded_flows_error_and_fallback_series_start_at_zero() -> None:
    """So that a first failure is a rise that rate() sees, not a series appearing at 1."""
    data = yaml.safe_load(GREETING_FLOW) | {"name": "greeting_from_zero"}
    flow = Flow.from_data(data, name="greeting_from_zero")

    def series() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {key: value for key, value in samples(exposition().decode()).items()
                if ("flow", "greeting_from_zero") in key[1]}

    assert series() == {}
    count_failures_from_zero([flow])
    errors = {("ivr_flow_errors_total", frozenset({("flow", flow.name), ("step", step)})): 0.0
              for step in ("lookup", "greet", "to_gold")}
    fallbacks = {("ivr_fallbacks_total", frozenset(
        {("channel", "voice"), ("flow", flow.name), ("reason", reason)})): 0.0
        for reason in FALLBACK_REASONS}
    assert {key: value for key, value in series().items()
            if not key[0].endswith("_created")} == errors | fallbacks


# --- logs ---------------------------------------------------------------------------------------

@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the `ivr` loggers write, as IVR_LOG_FORMAT=json formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    logger = logging.getLogger("ivr")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_logs_carry_the_call_sid_and_never_a_whole_number(
    server: ServerThread, json_log: io.StringIO
) -> None:
    params = call_params(L.GOLD)
    assert GOLD_DIAL in FakeTwilio(server.url).post("/twilio/voice", params).text
    message = FakeTwilio(server.url).message(L.PLATINUM)
    assert message.status_code == 200

    text = json_log.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert L.GOLD not in text and L.PLATINUM not in text and "loyalty-secret" not in text
    answered = [line for line in lines if line.get("call_sid") == params["CallSid"]
                and line["logger"] == "ivr.webhook"]
    assert len(answered) == 1
    line = answered[0]
    assert set(line) >= {"time", "level", "logger", "message", "channel", "flow", "route",
                         "duration_ms", "from"}
    assert line["level"] == "info" and line["channel"] == "voice"
    assert line["from"] == mask_number(L.GOLD) and line["route"] == "gold"
    assert line["flow"] == "loyalty_routing" and line["fallback_reason"] is None
    assert any(entry.get("message_sid") and entry.get("route") == "platinum" for entry in lines)


def test_a_number_in_a_traceback_is_masked_too(json_log: io.StringIO) -> None:
    try:
        raise ValueError(f"cannot reach http://crm/customers/%2B{L.GOLD[1:]} for {L.GOLD}")
    except ValueError:
        logging.getLogger("ivr.test").exception("lookup of %s failed", L.GOLD)
    text = json_log.getvalue()
    assert L.GOLD[1:] not in text
    entry = json.loads(text)
    assert mask_number(L.GOLD) in entry["message"] and "%2B1*******001" in entry["exception"]


# --- call traces --------------------------------------------------------------------------------

def test_a_call_trace_has_the_steps_the_fetch_and_the_route(server: ServerThread) -> None:
    params = call_params(L.GOLD)
    assert GOLD_DIAL in FakeTwilio(server.url).post("/twilio/voice", params).text
    trace = trace_of(server, params["CallSid"])
    assert trace["channel"] == "voice" and trace["endpoint"] == "voice"
    assert trace["from"] == mask_number(L.GOLD)
    assert trace["flow"] == "loyalty_routing"
    assert trace["steps"] == ["lookup", "by_tier", "gold_ack", "to_gold"]
    assert trace["fetches"]["lookup"]["outcome"] == "ok"
    assert trace["fetches"]["lookup"]["status"] == 200
    assert trace["fetches"]["lookup"]["elapsed_ms"] > 0
    assert trace["route"] == "gold" and trace["fallback_reason"] is None
    assert trace["duration_ms"] > 0 and trace["at"].startswith("20")
    assert L.GOLD not in json.dumps(trace)
    # Which process answered (the server runs in this test's process here).
    assert trace["instance"] == f"{socket.gethostname()}:{os.getpid()}"


def test_a_failed_lookup_is_traced_with_its_outcome(server: ServerThread) -> None:
    params = call_params(L.BROKEN)
    FakeTwilio(server.url).post("/twilio/voice", params)
    trace = trace_of(server, params["CallSid"])
    assert trace["fetches"]["lookup"]["outcome"] == "http_error"
    assert trace["fetches"]["lookup"]["status"] == 500
    assert trace["route"] == "standard"


def three_calls(server: ServerThread) -> list[str]:
    """A gold, a platinum and an unknown caller's calls, once their traces are stored: the SIDs."""
    twilio = FakeTwilio(server.url)
    sids = []
    for caller in (L.GOLD, L.PLATINUM, L.UNKNOWN):
        params = call_params(caller)
        twilio.post("/twilio/voice", params)
        sids.append(params["CallSid"])
    eventually(lambda: len(traces(server)) == 3)
    return sids


def test_the_calls_api_lists_newest_first_and_filters_by_sid(server: ServerThread) -> None:
    sids = three_calls(server)
    assert [trace["sid"] for trace in traces(server)] == sids[::-1]
    assert [trace["sid"] for trace in traces(server, limit=2)] == sids[:0:-1]
    assert [trace["route"] for trace in traces(server, sid=sids[1])] == ["platinum"]
    assert traces(server, sid="CA" + "f" * 32) == []
    newest = traces(server)[0]["answered"]
    assert traces(server, after=newest) == []
    for bad in ({"limit": 0}, {"limit": "x"}, {"sid": "CA<script>"}, {"after": "soon"}):
        response = httpx.get(server.url + "/admin/api/calls", params=bad, headers=AUTH)
        assert response.status_code == 422, bad
    assert httpx.get(server.url + "/admin/api/calls").status_code == 401


def test_only_the_newest_traces_are_kept(make_settings: Callable[..., Settings],
                                         start_server: Callable[[Settings], ServerThread]) -> None:
    server = start_server(make_settings(admin_token=ADMIN, trace_max_entries=3))
    twilio = FakeTwilio(server.url)
    sids = []
    for _ in range(5):
        params = call_params(L.GOLD)
        twilio.post("/twilio/voice", params)
        sids.append(params["CallSid"])
    eventually(lambda: traces(server) and traces(server)[0]["sid"] == sids[-1])
    assert [trace["sid"] for trace in traces(server)] == sids[:1:-1]


def test_traces_are_kept_for_ivr_trace_hours(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    redis_url: str,
) -> None:
    server = start_server(make_settings(admin_token=ADMIN, trace_hours=2))
    params = call_params(L.GOLD)
    FakeTwilio(server.url).post("/twilio/voice", params)
    trace_of(server, params["CallSid"])
    with redis.Redis.from_url(redis_url) as client:
        assert 2 * 3600 - 60 <= client.ttl(CALLS_KEY) <= 2 * 3600


def test_calls_are_still_answered_while_traces_cannot_be_stored(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    tmp_path: Path,
) -> None:
    own_redis = EmbeddedRedis(tmp_path / "own")
    server = start_server(make_settings(redis_url=own_redis.start(), admin_token=ADMIN))
    own_redis.stop()
    started = time.perf_counter()
    for _ in range(3):
        assert "<Sip>sip:" in FakeTwilio(server.url).call(L.GOLD).text
    assert time.perf_counter() - started < 10
    eventually(lambda: sample(httpx.get(server.url + "/metrics").text,
                              "ivr_call_traces_dropped_total") >= 3)


def run_ivr(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(IVR_ADMIN_URL=server.url, IVR_ADMIN_TOKEN=ADMIN)
    return subprocess.run([*IVR, *args], env=env, capture_output=True, text=True, timeout=60)


def test_ivr_calls_tail_prints_the_latest_calls_oldest_first(server: ServerThread) -> None:
    twilio = FakeTwilio(server.url)
    sids = []
    for caller in (L.GOLD, L.BROKEN):
        params = call_params(caller)
        twilio.post("/twilio/voice", params)
        sids.append(params["CallSid"])
    eventually(lambda: len(traces(server)) == 2)

    result = run_ivr(server, "calls", "tail", "-n", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert sids[0] in lines[0] and sids[1] in lines[1]
    assert "lookup>by_tier>gold_ack>to_gold -> gold" in lines[0]
    assert "fetch lookup: ok 200" in lines[0] and mask_number(L.GOLD) in lines[0]
    assert "fetch lookup: http_error 500" in lines[1] and "-> standard" in lines[1]

    one = run_ivr(server, "calls", "tail", "-n", "1", "--json")
    assert [json.loads(line)["sid"] for line in one.stdout.splitlines()] == [sids[1]]


class CallsPolls:
    """An ASGI app in front of the server's that counts the requests for /admin/api/calls as they
    arrive: a follower that sent poll N+1 has printed all it took from poll N."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self._arrived = threading.Condition()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/admin/api/calls":
            with self._arrived:
                self.count += 1
                self._arrived.notify_all()
        await self.app(scope, receive, send)

    def wait_for(self, count: int, timeout: float = 15.0) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: self.count >= count, timeout), \
                f"{self.count} requests for the calls, not {count}"


@pytest.fixture
def polled_server(make_settings: Callable[..., Settings]
                  ) -> Iterator[tuple[ServerThread, CallsPolls]]:
    """The server of `server`, behind a count of the requests for recent calls."""
    polls = CallsPolls(create_app(make_settings(admin_token=ADMIN)))
    with ServerThread(polls) as server:
        yield server, polls


def follow(server: ServerThread, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`ivr calls tail ARGS --follow` against `server`, and the lines it prints as they come."""
    env = clean_env(IVR_ADMIN_URL=server.url, IVR_ADMIN_TOKEN=ADMIN, PYTHONUNBUFFERED="1")
    follower = subprocess.Popen([*IVR, "calls", "tail", *args, "--follow"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [printed.put(line) for line in follower.stdout],
                     daemon=True).start()
    return follower, printed


def test_ivr_calls_tail_follow_prints_new_calls_as_they_come(
    polled_server: tuple[ServerThread, CallsPolls],
) -> None:
    server, polls = polled_server
    follower, printed = follow(server)
    twilio = FakeTwilio(server.url)
    try:
        polls.wait_for(2)  # following: the first fetch printed nothing, and it polls
        assert follower.poll() is None
        params = call_params(L.PLATINUM)
        twilio.post("/twilio/voice", params)
        line = printed.get(timeout=15)  # the first line printed is the new call's
        assert params["CallSid"] in line and "-> platinum" in line
        polls.wait_for(polls.count + 2)  # printed once, not again at the next poll
        later = call_params(L.GOLD)
        twilio.post("/twilio/voice", later)
        assert later["CallSid"] in printed.get(timeout=15)
    finally:
        follower.terminate()
        follower.wait(10)


def test_ivr_calls_tail_n_follow_prints_only_the_newest_then_new_ones(
    polled_server: tuple[ServerThread, CallsPolls],
) -> None:
    """`-n 1 --follow` printed the newest call, then at the first poll older ones of the last
    seconds, out of order."""
    server, polls = polled_server
    sids = three_calls(server)
    twilio = FakeTwilio(server.url)
    follower, printed = follow(server, "-n", "1")
    try:
        assert sids[2] in printed.get(timeout=15)
        polls.wait_for(polls.count + 2)  # the next poll looks back over the three calls
        params = call_params(L.GOLD)
        twilio.post("/twilio/voice", params)
        assert params["CallSid"] in printed.get(timeout=15)
    finally:
        follower.terminate()
        follower.wait(10)
    none = run_ivr(server, "calls", "tail", "--sid", "CAnothing")
    assert none.returncode == 0 and none.stdout == ""
    assert "no calls for CAnothing yet" in none.stderr


def test_ivr_calls_tail_without_a_token_explains(server: ServerThread) -> None:
    env = clean_env(IVR_ADMIN_URL=server.url)
    result = subprocess.run([*IVR, "calls", "tail"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "IVR_ADMIN_TOKEN" in result.stderr


def test_the_admin_page_lists_recent_calls(server: ServerThread) -> None:
    params = call_params(L.GOLD)
    FakeTwilio(server.url).post("/twilio/voice", params)
    trace_of(server, params["CallSid"])
    with httpx.Client(base_url=server.url, timeout=10) as client:
        form = client.get("/admin/login")
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        signed_in = client.post("/admin/login",
                                data={"csrf": csrf, "user": "", "password": ADMIN})
        assert signed_in.status_code == 303
        index = client.get("/admin/")
        assert 'href="/admin/calls"' in index.text
        page = client.get("/admin/calls")
        assert page.status_code == 200
        assert params["CallSid"] in page.text and mask_number(L.GOLD) in page.text
        assert "lookup → by_tier → gold_ack → to_gold" in page.text
        assert L.GOLD not in page.text
        one = client.get("/admin/calls", params={"sid": "CA" + "f" * 32})
        assert params["CallSid"] not in one.text and "No trace of" in one.text


def test_the_openapi_document_describes_the_calls_route(server: ServerThread) -> None:
    document = httpx.get(server.url + "/admin/api/openapi.json").json()
    operation = document["paths"]["/calls"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"limit", "sid", "after"}
    properties = document["components"]["schemas"]["CallTrace"]["properties"]
    assert {"route", "waiting_at", "answer"} <= set(properties)
    # Every field a trace has is described.
    params = call_params(L.GOLD)
    FakeTwilio(server.url).post("/twilio/voice", params)
    assert set(trace_of(server, params["CallSid"])) <= set(properties)


# --- questions, answers and conversations handed off, in traces ---------------------------------

def answer_call(twilio: FakeTwilio, params: dict[str, str], turn: int, **given: str) -> str:
    """Answer the question of `turn` (Digits=..., SpeechResult=..., or nothing: silence)."""
    return twilio.post(f"/twilio/voice?turn={turn}", {**params, **given}).text


def test_a_turn_waiting_at_a_question_and_each_answer_it_got_are_traced(
    server: ServerThread,
) -> None:
    twilio = FakeTwilio(server.url)
    params = call_params(CUSTOMER, To=TEAM_CHOICE)
    assert "<Gather" in twilio.post("/twilio/voice", params).text
    assert "<Gather" in answer_call(twilio, params, 1, Digits="7")
    assert "<Gather" in answer_call(twilio, params, 2)  # silence
    assert "sip:support@" in answer_call(twilio, params, 3, SpeechResult="Support, please.")
    asked, wrong, silent, routed = eventually(
        lambda: len(found := traces(server, sid=params["CallSid"])) == 4 and found[::-1])

    assert asked["steps"] == ["start", "menu"] and asked["waiting_at"] == "menu"
    assert asked["route"] is None and asked["answer"] is None
    assert asked["summary"].endswith("waits at menu")
    assert wrong["answer"] == {"step": "menu", "given": "7", "valid": False}
    assert wrong["waiting_at"] == "menu"  # asked again
    assert silent["answer"] == {"step": "menu", "given": None, "valid": False}
    assert routed["answer"] == {"step": "menu", "given": "Support, please.", "valid": True,
                                "choice": "support"}
    assert routed["waiting_at"] is None and routed["route"] == "support"

    result = run_ivr(server, "calls", "tail", "--sid", params["CallSid"])
    lines = result.stdout.splitlines()
    assert "waits at menu" in lines[0]
    assert 'answer at menu: "7" (not valid)' in lines[1]
    assert "answer at menu: no answer" in lines[2]
    assert 'answer at menu: "Support, please." (support)' in lines[3]


def test_a_message_answering_a_question_is_traced_and_an_email_is_masked(
    server: ServerThread,
) -> None:
    twilio = FakeTwilio(server.url)
    sender = "whatsapp:" + CUSTOMER
    email = "jane.doe@example.com"
    twilio.post("/twilio/messaging", message_params(sender, "Hello", To=VIP_BY_EMAIL))
    reply = message_params(sender, email, To=VIP_BY_EMAIL)
    assert "reply shortly" in twilio.post("/twilio/messaging", reply).text
    trace = trace_of(server, reply["MessageSid"])
    assert trace["answer"] == {"step": "ask_email", "given": "j" + "*" * 16 + "com",
                               "valid": True, "masked": True}
    assert trace["route"] == "regular"
    eventually(lambda: len(traces(server)) == 2)
    assert email not in json.dumps(traces(server))
    tail = run_ivr(server, "calls", "tail")
    assert f'answer at ask_email: "j{"*" * 16}com" (masked, valid)' in tail.stdout
    assert email not in tail.stdout


def test_a_number_or_email_in_a_menu_answer_is_masked_and_a_long_answer_cut(
    server: ServerThread,
) -> None:
    twilio = FakeTwilio(server.url)
    params = call_params(CUSTOMER, To=TEAM_CHOICE)
    twilio.post("/twilio/voice", params)
    answer_call(twilio, params, 1, SpeechResult="support my account is 123456789")
    answered = eventually(lambda: len(found := traces(server, sid=params["CallSid"])) == 2
                          and found[0])
    assert answered["answer"]["given"] == "support my account is 1*****789"
    assert answered["answer"]["choice"] == "support"

    menu = AskStep(kind="ask", prompt="Sales or support?", expect="choice",
                   options={"sales": ["1"], "support": ["2"]}, next="a", on_exhausted="b")
    for said, shown in [("sales, my number is 555-123-4567", "sales, my number is 5**-***-*567"),
                        ("support 555 123 4567", "support 5** *** *567"),
                        ("+1 (555) 123-4567 sales", "+1 (***) ***-*567 sales"),
                        ("1234 5678 9012 3456 card", "1*** **** **** *456 card"),
                        ("press 2 or 1234", "press 2 or 1234")]:  # four digits: a menu's keys
        assert shown_answer("menu", menu, said, True, "voice")["given"] == shown
    spoken_email = shown_answer("menu", menu, "support for jane@example.com", True, "voice")
    assert spoken_email["given"] == "support for j" + "*" * 12 + "com"
    said = "I would like to talk to someone about support " * 3
    cut = shown_answer("menu", menu, said, True, "voice")
    assert len(cut["given"]) == MAX_ANSWER_LENGTH and cut["given"].endswith("…")
    text = AskStep(kind="ask", prompt="Why?", next="a", on_exhausted="b")
    masked = shown_answer("why", text, said, True, "messaging")["given"]
    assert masked == "I" + "*" * (MAX_ANSWER_LENGTH - 4) + "ort"
    assert shown_answer("why", text, "1234", True, "voice")["given"] == "****"


def test_a_message_in_a_conversation_already_handed_off_says_where_it_was_forwarded(
    server: ServerThread,
) -> None:
    twilio = FakeTwilio(server.url)
    sender = CUSTOMER
    twilio.post("/twilio/messaging", message_params(sender, "Hello", To=TEAM_CHOICE))
    twilio.post("/twilio/messaging", message_params(sender, "sales please", To=TEAM_CHOICE))
    later = message_params(sender, "and one more thing", To=TEAM_CHOICE)
    assert 'to="+15550100107"' in twilio.post("/twilio/messaging", later).text
    trace = trace_of(server, later["MessageSid"])
    assert trace["summary"] == "forwarded to queue sales (conversation already handed off)"
    assert trace["route"] == "sales" and trace["flow"] == "team_choice"
    tail = run_ivr(server, "calls", "tail", "--sid", later["MessageSid"])
    assert "forwarded to queue sales (conversation already handed off)" in tail.stdout

    # An admin stops the queue taking messages: the next one is not forwarded, and says so.
    cleared = httpx.patch(server.url + "/admin/api/queues/sales", headers=AUTH,
                          json={"message_to": None})
    assert cleared.status_code == 200, cleared.text
    unread = message_params(sender, "anyone there?", To=TEAM_CHOICE)
    assert "<Message to=" not in twilio.post("/twilio/messaging", unread).text
    assert trace_of(server, unread["MessageSid"])["summary"] == (
        "not forwarded: queue sales has no message_to (conversation already handed off)")


def test_a_trace_write_cut_short_by_shutdown_is_made_by_the_last_try(redis_url: str) -> None:
    """Shutdown cancels the trace writer, here while Redis holds its write: the traces of that
    write go back in the queue, and close()'s last try writes them (they were lost before)."""

    async def scenario() -> tuple[bool, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        admin = aioredis.Redis.from_url(redis_url)
        writer = CallTraces(client, redis_url, max_entries=100, hours=1)
        writer.start()
        try:
            # Redis holds write commands for 0.5 s: the writer's ZADD waits for its reply.
            await admin.execute_command("CLIENT", "PAUSE", 500, "WRITE")
            trace = CallTrace("voice", "voice", "CA" + "1" * 32, "+1*******567")
            trace.finish("test", 0.001)
            writer.record(trace)
            await asyncio.sleep(WRITE_INTERVAL + 0.2)  # the write is in flight, held
            done, _ = await asyncio.wait({asyncio.ensure_future(writer.close())}, timeout=10)
            return bool(done), await admin.zcard(CALLS_KEY)
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
            await client.aclose()
            await admin.aclose()

    closed, stored = asyncio.run(scenario())
    assert closed
    assert stored == 1


def test_closing_the_trace_writer_during_its_writes_never_hangs(redis_url: str) -> None:
    """Closes timed to land while the writer's write runs (without Redis held up): when redis-py
    made the writes, it could swallow the cancellation there, and before the fix about half of
    these closes waited forever (a server's shutdown with them)."""

    async def close_during_a_write(rounds: int) -> int:
        hung = 0
        for i in range(rounds):
            client = aioredis.Redis.from_url(redis_url, decode_responses=True)
            writer = CallTraces(client, redis_url, max_entries=1000, hours=1)
            writer.start()
            for n in range(50):
                trace = CallTrace("voice", "voice", f"CA{i:016d}{n:016d}", "+1*******567")
                trace.finish("test", 0.001)
                writer.record(trace)
            # Spread around the end of the writer's pause, where its write begins.
            await asyncio.sleep(WRITE_INTERVAL + (i % 7) * 0.001 - 0.002)
            done, _ = await asyncio.wait({asyncio.ensure_future(writer.close())}, timeout=5)
            hung += not done
            await client.aclose()
        return hung

    assert asyncio.run(close_during_a_write(20)) == 0
