"""`ivr serve`'s workers: SIGHUP replaces them under load without refusing or failing a webhook,
a stopping worker answers what it was sent, SIGTERM drains, a reload that cannot start keeps the
old workers serving. Real `ivr serve` processes on embedded Redis, signed webhooks."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import pytest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests import loyalty_api as L
from tests.conftest import Served
from tests.servers import ServerThread
from tests.test_cli import alive, redis_pid
from tests.test_observability import eventually, sample, samples
from tests.twilio_client import FakeTwilio, call_params, redirect_path, sign

RELOAD_TIMEOUT = 60.0  # a new worker starts in a second or two, many more on a loaded machine
_fresh_callers = itertools.count(1)


def local_token(server: Served) -> str:
    return (server.cwd / "var" / "local_twilio_auth_token").read_text().strip()


def workers_of(server: Served) -> set[int]:
    """The pids of the server's live workers: uvicorn's spawned processes, not Redis nor
    multiprocessing's resource tracker."""
    found = set()
    for child in psutil.Process(server.process.pid).children():
        try:
            if (child.status() != psutil.STATUS_ZOMBIE
                    and "spawn_main" in " ".join(child.cmdline())):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def replaced(server: Served, old: set[int]) -> set[int]:
    """The new workers, once every one of `old` has been replaced (the reload's end, as an
    event: the old workers gone, as many new ones serving)."""
    return eventually(lambda: (now := workers_of(server)) and not now & old
                      and len(now) == len(old) and now, timeout=RELOAD_TIMEOUT)


def log_entries(server: Served) -> list[dict[str, Any]]:
    """The server's JSON log lines (IVR_LOG_FORMAT is `auto`: JSON to a file)."""
    entries = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def logged(server: Served, message: str, process: int | None = None) -> bool:
    return any(message in entry["message"] and process in (None, entry.get("process"))
               for entry in log_entries(server))


def dialled(status: int, body: str, queue: str) -> bool:
    """Whether a webhook's answer dials `queue`."""
    return status == 200 and f"<Sip>sip:{queue}@queues.example.com</Sip>" in body


def dials(response: httpx.Response, queue: str) -> bool:
    return dialled(response.status_code, response.text, queue)


class CallLoad:
    """Callers calling continuously from threads until stopped, half of them on connections kept
    alive, half on a new connection each, as a proxy and as Twilio might: a gold member (a cached
    lookup) and callers the loyalty API does not know (a lookup each, routed to standard)."""

    def __init__(self, server: Served, threads: int = 4) -> None:
        self.url = server.url
        self.token = local_token(server)
        self.answered: list[tuple[str, httpx.Response]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, args=(index % 2 == 0,))
                         for index in range(threads)]

    def _call(self, keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        with httpx.Client(timeout=20, limits=limits) as client:
            while not self._stop.is_set():
                caller, queue = (L.GOLD, "gold") if len(self.answered) % 2 else (
                    f"+1555300{next(_fresh_callers):04d}", "standard")
                params = call_params(caller)
                url = self.url + "/twilio/voice"
                try:
                    response = client.post(url, data=params, headers={
                        "X-Twilio-Signature": sign(url, params, self.token)})
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    self.answered.append((queue, response))

    def wait_for(self, answers: int) -> None:
        eventually(lambda: len(self.answered) >= answers or self.errors, timeout=60)

    def __enter__(self) -> CallLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_sighup_replaces_every_worker_under_load_and_no_webhook_is_refused_or_fails(
    newcomer_serve: Callable[..., Served], workers: int,
) -> None:
    server = newcomer_serve("--workers", str(workers))
    store = redis_pid(server.cwd)
    old = eventually(lambda: len(found := workers_of(server)) == workers and found)
    with CallLoad(server) as load:
        load.wait_for(answers=20)
        server.process.send_signal(signal.SIGHUP)
        new = replaced(server, old)
        load.wait_for(answers=len(load.answered) + 20)  # answered by the new workers
    assert load.errors == []
    wrong = [(queue, r.status_code, r.text) for queue, r in load.answered
             if not dials(r, queue)]
    assert wrong == []
    assert server.process.poll() is None and redis_pid(server.cwd) == store
    assert httpx.get(server.url + "/readyz").json()["pid"] in new
    # Every call counted once, the replaced workers' counts summed in.
    metrics = httpx.get(server.url + "/metrics").text
    assert sum(sample(metrics, "ivr_routes_total", channel="voice", flow="loyalty_routing",
                      queue=queue) for queue in ("gold", "standard")) == len(load.answered)


def test_a_stopping_worker_answers_a_request_already_sent_on_a_connection_it_holds(
    newcomer_serve: Callable[..., Served],
) -> None:
    """A connection the stopping worker accepted before the request came, and one kept alive
    after a first webhook: each had its request reset by the worker's stop (a client sees
    `Connection reset by peer`, Twilio an application error). They are answered, and closed."""
    server = newcomer_serve()
    (old,) = workers_of(server)
    url = server.url + "/twilio/voice"

    def post(connection: http.client.HTTPConnection) -> tuple[http.client.HTTPResponse, str]:
        params = call_params(L.GOLD)
        connection.request("POST", "/twilio/voice", body=urlencode(params), headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(url, params, local_token(server))})
        response = connection.getresponse()
        return response, response.read().decode()

    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    response, body = post(kept)
    assert dialled(response.status, body, "gold")
    fresh = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    fresh.connect()
    ours = {conn.sock.getsockname()[1] for conn in (kept, fresh)}  # type: ignore[union-attr]
    # Both are the old worker's (the only one) before it is told to stop.
    eventually(lambda: ours <= {c.raddr.port for c in psutil.Process(old).net_connections()
                                if c.raddr})
    server.process.send_signal(signal.SIGHUP)
    eventually(lambda: logged(server, "Shutting down", process=old), timeout=RELOAD_TIMEOUT)
    for connection in (kept, fresh):
        response, body = post(connection)
        assert dialled(response.status, body, "gold"), body
        # And the client is told not to send another on it (uvicorn >= 0.53 says so).
        assert response.getheader("connection") == "close"
        connection.close()
    replaced(server, {old})


class GatedLoyaltyApi:
    """A loyalty API that answers gold once the test opens the gate."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.gate = threading.Event()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/customers/{number}", self.customer)])

    async def customer(self, request: Request) -> JSONResponse:
        self.asked.set()
        await run_in_threadpool(self.gate.wait, 30)
        return JSONResponse({"loyaltyStatus": "gold"})


@pytest.fixture
def gated_loyalty() -> Iterator[tuple[GatedLoyaltyApi, str]]:
    api = GatedLoyaltyApi()
    with ServerThread(api.app()) as server:
        yield api, server.url
        api.gate.set()


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_sigterm_answers_the_webhook_in_progress_then_stops_the_workers_then_redis(
    newcomer_serve: Callable[..., Served], gated_loyalty: tuple[GatedLoyaltyApi, str], stop: str,
) -> None:
    api, url = gated_loyalty
    # No hold prompt: the webhook itself waits for the lookup.
    server = newcomer_serve(IVR_LOYALTY_API_URL=url, IVR_HOLD_AFTER="10")
    (worker,) = workers_of(server)
    store = redis_pid(server.cwd)
    params = call_params("+15553000999")
    answers: list[httpx.Response] = []
    twilio = FakeTwilio(server.url, token=local_token(server))
    calling = threading.Thread(target=lambda: answers.append(
        twilio.post("/twilio/voice", params)))
    calling.start()
    try:
        assert api.asked.wait(30)
        if stop == "sigterm":
            server.process.send_signal(signal.SIGTERM)
        else:  # what a terminal does: SIGINT to every process of its foreground group
            os.killpg(server.process.pid, signal.SIGINT)
        # The worker stopped taking connections and waits for the webhook: it may now answer.
        eventually(lambda: logged(server, "Waiting for connections to close", process=worker),
                   timeout=RELOAD_TIMEOUT)
    finally:
        api.gate.set()
        calling.join()
    (answer,) = answers
    assert dials(answer, "gold"), answer.text
    assert server.process.wait(30) == 0
    assert "starting it again" not in server.log.read_text()  # Redis ran to the end
    assert not alive(worker) and not alive(store)
    # Its call trace, written as the worker stopped, reached Redis before Redis stopped.
    aof = (server.cwd / "var" / "redis" / "appendonly.aof").read_bytes()
    assert params["CallSid"].encode() in aof


PATIENT_NUMBER = "+15005550177"
# The loyalty lookup given all the time the decision deadline allows, so that a test can hold
# its answer for as long as a reload takes.
PATIENT_FLOW = f"""\
name: patient_lookup
description: Look the caller up, however long the loyalty API takes within the deadline.
trigger:
  channels: [voice]
  numbers: ["{PATIENT_NUMBER}"]
fallback_queue: standard
steps:
  lookup:
    kind: fetch
    url: "{{{{ settings.loyalty_api_url }}}}/customers/{{{{ contact.number | urlencode }}}}"
    timeout: 10
    save:
      tier: loyaltyStatus
    next: by_tier
    on_error: to_standard
  by_tier:
    kind: branch
    value: vars.tier
    cases:
      - equals: gold
        next: to_gold
    else: to_standard
  to_gold:
    kind: route
    queue: gold
  to_standard:
    kind: route
    queue: standard
"""


def test_a_call_on_hold_across_a_reload_gets_the_decision_its_old_worker_made(
    newcomer: tuple[Path, dict[str, str]], newcomer_serve: Callable[..., Served],
    gated_loyalty: tuple[GatedLoyaltyApi, str],
) -> None:
    """The caller hears the hold prompt from the old worker, whose decision (a slow lookup)
    ends after it was told to stop; Twilio's redirect reaches the new worker. The old worker
    stopped without it, and the new one, finding no decision, sent the caller to the fallback
    queue."""
    api, url = gated_loyalty
    cwd, _ = newcomer
    (cwd / "flows" / "patient_lookup.yaml").write_text(PATIENT_FLOW)
    server = newcomer_serve(IVR_LOYALTY_API_URL=url, IVR_HOLD_AFTER="0.2",
                            IVR_DECISION_DEADLINE="12")
    (old,) = workers_of(server)
    twilio = FakeTwilio(server.url, token=local_token(server))
    params = call_params("+15553000998", To=PATIENT_NUMBER)
    held = twilio.post("/twilio/voice", params, follow=False)
    redirect = redirect_path(held)
    assert redirect is not None and api.asked.is_set(), held.text
    server.process.send_signal(signal.SIGHUP)
    eventually(lambda: logged(server, "Waiting for application shutdown", process=old),
               timeout=RELOAD_TIMEOUT)
    api.gate.set()
    replaced(server, {old})
    assert dials(twilio.post(redirect, params, follow=False), "gold")


def test_sighup_rereads_env_and_a_reload_that_cannot_start_keeps_the_old_worker_serving(
    newcomer_serve: Callable[..., Served],
) -> None:
    server = newcomer_serve()
    (old,) = workers_of(server)
    env_file = server.cwd / ".env"
    env_file.write_text("IVR_DECISION_DEADLINE=soon\n")
    server.process.send_signal(signal.SIGHUP)
    eventually(lambda: logged(server, f"keeping worker [{old}]"), timeout=RELOAD_TIMEOUT)
    assert "IVR_DECISION_DEADLINE: expected a number" in server.log.read_text()  # why
    assert workers_of(server) == {old}
    assert httpx.get(server.url + "/readyz").json()["pid"] == old
    twilio = FakeTwilio(server.url, token=local_token(server))
    assert dials(twilio.call(L.GOLD), "gold")

    # Fixed, and a setting changed: the next reload serves with it.
    new_token = "a-new-auth-token-0123456789abcdef"
    env_file.write_text(f"TWILIO_AUTH_TOKEN={new_token}\n")
    server.process.send_signal(signal.SIGHUP)
    (new,) = replaced(server, {old})
    assert httpx.get(server.url + "/readyz").json()["pid"] == new
    assert twilio.call(L.GOLD).status_code == 403  # the local token no longer signs
    signed_anew = FakeTwilio(server.url, token=new_token)
    assert dials(signed_anew.call(L.GOLD), "gold")
    assert server.process.poll() is None


@pytest.mark.parametrize("replacement", ["reload", "kill"])
def test_metrics_drop_the_gauges_of_a_replaced_worker(
    newcomer_serve: Callable[..., Served], replacement: str,
) -> None:
    """A worker's breaker opened, then the worker was replaced (reloaded, or killed and started
    again by `ivr serve`): its gauge went on reporting an open breaker, the highest of every
    worker's, the dead ones' included."""
    server = newcomer_serve()
    (old,) = workers_of(server)
    twilio = FakeTwilio(server.url, token=local_token(server))
    for _ in range(5):  # 500s: the breaker on the loyalty API opens
        assert dials(twilio.call(L.BROKEN), "standard")
    breaker = ("ivr_breaker_state",
               frozenset({"upstream": server.env["IVR_LOYALTY_API_URL"].removeprefix("http://")
                          }.items()))
    assert samples(httpx.get(server.url + "/metrics").text)[breaker] == 2  # open
    if replacement == "reload":
        server.process.send_signal(signal.SIGHUP)
    else:
        os.kill(old, signal.SIGKILL)
    replaced(server, {old})
    eventually(lambda: httpx.get(server.url + "/readyz").status_code == 200)
    assert dials(twilio.call(L.GOLD), "gold")  # through a closed breaker
    metrics = samples(httpx.get(server.url + "/metrics").text)
    assert metrics[breaker] == 0
    assert metrics[("ivr_store_up", frozenset())] == 1
