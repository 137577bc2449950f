"""Purging the fetch cache (issue 15, item 10): a caller whose 404 was cached goes to `standard`
until an admin purges the answer, one caller's or the whole step's, through the admin API or
`ivr cache purge`; every instance and worker forgets its copy in memory too, and the purge is
audited. Real parts: the loyalty API, Redis, the app under uvicorn, `ivr serve --workers 2`."""

from __future__ import annotations

import asyncio
import getpass
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from ivr.flows.upstream import Answer, Upstreams
from ivr.logs import mask_number
from ivr.redis import queue_store as store_module
from ivr.redis.autopipeline import AutoPipeline
from ivr.redis.client import connect
from ivr.redis.fetch_cache_purges import GENERATIONS_KEY, PURGES_KEY, FetchCachePurges
from ivr.redis.queue_store import QueueStore
from ivr.settings import Settings
from tests.conftest import Served, run_ivr
from tests.loyalty_api import LoyaltyApi
from tests.servers import ServerThread
from tests.twilio_client import TOKEN, FakeTwilio

ADMIN = "purge-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN}", "X-IVR-Actor": "alice"}
PROPAGATION = 2.0  # seconds another process may take to hear of a purge (as of a queue change)
# Callers the loyalty API does not know (404) until a test gives them a tier.
CALLERS = [f"+1555987{n:04d}" for n in range(1, 6)]


@pytest.fixture
def loyalty_data(loyalty: tuple[LoyaltyApi, str]) -> Iterator[LoyaltyApi]:
    """The loyalty API, whose data a test fixes (tiers), and forgets after it."""
    api = loyalty[0]
    api.tiers.clear()
    api.requests.clear()
    yield api
    api.tiers.clear()


@pytest.fixture
def servers(make_settings: Callable[..., Settings],
            start_server: Callable[[Settings], ServerThread]) -> Callable[[], ServerThread]:
    """Instances of the server on one Redis, each with its own process memory."""
    return lambda: start_server(make_settings(admin_token=ADMIN))


def routed_queue(server: ServerThread | Served, caller: str) -> str:
    twiml = FakeTwilio(server.url).call(caller).text
    found = re.search(r"<Sip>sip:(\w+)@", twiml)
    assert found, twiml
    return found.group(1)


def lookups_of(api: LoyaltyApi, caller: str) -> int:
    return sum(1 for path, _ in api.requests if path.endswith(caller.replace("+", "%2B")))


def admin(server: ServerThread | Served) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/admin/api", headers=AUTH, timeout=30)


def purge(server: ServerThread | Served, **body: str) -> httpx.Response:
    with admin(server) as client:
        return client.post("/cache/purge", json={"flow": "loyalty_routing", "step": "lookup",
                                                 **body})


def eventually_routed(server: ServerThread, caller: str, queue: str) -> str:
    """Where `caller` is routed once it is `queue`, or when PROPAGATION is over."""
    deadline = time.monotonic() + PROPAGATION
    while (routed := routed_queue(server, caller)) != queue and time.monotonic() < deadline:
        time.sleep(0.02)
    return routed


def test_a_purged_caller_is_looked_up_again_on_every_instance_and_audited(
    servers: Callable[[], ServerThread], loyalty_data: LoyaltyApi,
) -> None:
    first, second = servers(), servers()
    caller, other = CALLERS[0], CALLERS[1]
    for server in (first, second, first, second):
        assert routed_queue(server, caller) == "standard"  # the 404, then cached
        assert routed_queue(server, other) == "standard"
    assert lookups_of(loyalty_data, caller) == 1  # the second instance keeps Redis's answer

    loyalty_data.tiers.update({caller: "gold", other: "gold"})  # the data is fixed
    assert routed_queue(first, caller) == routed_queue(second, caller) == "standard"
    assert lookups_of(loyalty_data, caller) == 1

    response = purge(first, caller=caller)
    assert response.status_code == 200, response.text
    assert response.json() == {"flow": "loyalty_routing", "step": "lookup", "caller": caller,
                               "removed": 1, "generation": None}
    assert routed_queue(first, caller) == "gold"  # the instance that purged: at once
    assert eventually_routed(second, caller, "gold") == "gold"  # the other: by pub/sub
    assert lookups_of(loyalty_data, caller) == 2

    # Another caller's answer stays cached on both: their calls make no lookup.
    assert routed_queue(first, other) == routed_queue(second, other) == "standard"
    assert lookups_of(loyalty_data, other) == 1

    with admin(first) as client:
        entry = client.get("/audit").json()["entries"][0]
    assert entry["action"] == "purge" and entry["who"] == "alice (admin token)"
    assert (entry["flow"], entry["step"], entry["removed"]) == ("loyalty_routing", "lookup", 1)
    assert entry["caller"] == mask_number(caller) == "+1*******001"  # as logs mask numbers
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["at"])


def test_a_whole_step_purge_makes_every_caller_look_up_again_also_on_a_new_instance(
    servers: Callable[[], ServerThread], loyalty_data: LoyaltyApi,
) -> None:
    first, second = servers(), servers()
    for caller in CALLERS:
        for server in (first, second):
            assert routed_queue(server, caller) == "standard"
    loyalty_data.tiers.update(dict.fromkeys(CALLERS, "platinum"))
    before = {caller: lookups_of(loyalty_data, caller) for caller in CALLERS}

    response = purge(first)
    assert response.status_code == 200, response.text
    assert response.json() == {"flow": "loyalty_routing", "step": "lookup", "caller": None,
                               "removed": None, "generation": 1}
    for caller in CALLERS:
        assert routed_queue(first, caller) == "platinum"
        assert eventually_routed(second, caller, "platinum") == "platinum"
    assert all(lookups_of(loyalty_data, caller) > before[caller] for caller in CALLERS)
    # A process started after the purge reads the step's new generation, never the old
    # answers still in Redis (they expire by themselves).
    loyalty_data.tiers.update(dict.fromkeys(CALLERS, "gold"))
    assert purge(first).json()["generation"] == 2
    third = servers()
    assert [routed_queue(third, caller) for caller in CALLERS] == ["gold"] * len(CALLERS)

    with admin(first) as client:
        entries = client.get("/audit").json()["entries"]
    assert [(e["action"], e["caller"], e["generation"]) for e in entries[:2]] == [
        ("purge", None, 2), ("purge", None, 1)]


def test_a_caller_named_as_whatsapp_sends_them_is_purged_by_their_number(
    servers: Callable[[], ServerThread], loyalty_data: LoyaltyApi,
) -> None:
    server = servers()
    caller = CALLERS[2]
    assert "One of our team" in FakeTwilio(server.url).message(f"whatsapp:{caller}").text
    loyalty_data.tiers[caller] = "gold"
    assert routed_queue(server, caller) == "standard"  # the lookup the message cached
    spaced = f"whatsapp:{caller[:2]} ({caller[2:5]}) {caller[5:8]}-{caller[8:]}"
    response = purge(server, caller=spaced)
    assert response.status_code == 200, response.text
    assert (response.json()["caller"], response.json()["removed"]) == (caller, 1)
    assert routed_queue(server, caller) == "gold"


def test_a_caller_is_purged_from_a_step_whose_request_reads_a_secret(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
    config_dir: Path, loyalty_data: LoyaltyApi,
) -> None:
    """The purge renders the caller's request as a call does, secrets included: else its key
    is another one, and the cached answer stays."""
    flow = config_dir / "flows" / "loyalty_routing.yaml"
    flow.write_text(flow.read_text().replace(
        "settings.loyalty_api_token", "secrets.loyalty_key"))
    server = start_server(make_settings(admin_token=ADMIN, secrets={"loyalty_key": "key-123456"}))
    caller = CALLERS[4]
    assert routed_queue(server, caller) == "standard"
    loyalty_data.tiers[caller] = "gold"
    response = purge(server, caller=caller)
    assert response.status_code == 200, response.text
    assert response.json()["removed"] == 1
    assert routed_queue(server, caller) == "gold"


def test_purging_a_caller_with_nothing_cached_says_so(
    servers: Callable[[], ServerThread], loyalty_data: LoyaltyApi,
) -> None:
    response = purge(servers(), caller=CALLERS[3])
    assert response.status_code == 200
    assert response.json()["removed"] == 0


def test_a_purge_that_names_nothing_purgeable_is_refused_in_plain_words_and_not_audited(
    servers: Callable[[], ServerThread], config_dir: Path,
) -> None:
    (config_dir / "flows" / "by_param.yaml").write_text(
        'trigger: {channels: [voice], numbers: ["+15005550199"]}\n'
        "fallback_queue: standard\n"
        "steps:\n"
        "  lookup:\n"
        "    kind: fetch\n"
        '    url: "{{ settings.loyalty_api_url }}/customers/{{ params.Caller | urlencode }}"\n'
        "    cache: 1m\n"
        "    next: done\n"
        "    on_error: done\n"
        "  done: {kind: end}\n")
    server = servers()
    with admin(server) as client:
        def refused(body: dict[str, object], status: int = 422) -> str:
            response = client.post("/cache/purge", json=body)
            assert response.status_code == status, response.text
            problems = response.json().get("errors", [])
            return " | ".join([response.json()["error"],
                               *(f"{p['field']}: {p['message']}" for p in problems)])

        assert refused({"flow": "loyalty_routng", "step": "lookup"}, 404) == (
            "'loyalty_routng' is not a flow: did you mean 'loyalty_routing'?")
        assert refused({"flow": "loyalty_routing", "step": "lookpu"}, 404) == (
            "'lookpu' is not a step of flow 'loyalty_routing': did you mean 'lookup'?")
        assert "step: step 'by_tier' of flow 'loyalty_routing' is a branch step, not a cached " \
            "fetch: nothing to purge (its cached fetch steps: lookup)" in refused(
                {"flow": "loyalty_routing", "step": "by_tier"})
        assert "step 'menu' of flow 'team_choice' is an ask step, not a cached fetch" in \
            refused({"flow": "team_choice", "step": "menu"})
        assert "is a fetch step without `cache`, not a cached fetch" in refused(
            {"flow": "vip_by_email", "step": "lookup"})
        assert "caller: '+1555abc' is not a phone number: give it in E.164, e.g. " \
            "+15551234567" in refused({"flow": "loyalty_routing", "step": "lookup",
                                        "caller": "+1555abc"})
        assert "caller: '' is not a phone number" in refused(
            {"flow": "loyalty_routing", "step": "lookup", "caller": ""})
        assert "callers: unknown field" in refused(
            {"flow": "loyalty_routing", "step": "lookup", "callers": "+15551234567"})
        assert "flow: is required" in refused({"step": "lookup"})
        assert "caller: step 'lookup' makes its request from params too, which a purge cannot " \
            "know for one caller: purge the whole step" in refused(
                {"flow": "by_param", "step": "lookup", "caller": "+15551234567"})
        assert client.post("/cache/purge", content=b"{").status_code == 400
        assert client.get("/audit").json()["total"] == 0
        assert httpx.post(server.url + "/admin/api/cache/purge", json={
            "flow": "loyalty_routing", "step": "lookup"}).status_code == 401
        assert client.post("/cache/purge", json={"flow": "by_param", "step": "lookup"}
                           ).status_code == 200  # the whole step can be


def test_a_process_that_missed_a_purge_message_drops_what_it_keeps(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lost pub/sub message (a reconnection): the periodic check sees the purge counter
    differ, and the process forgets every answer it keeps rather than serve a purged one."""
    monkeypatch.setattr(store_module, "RECHECK_INTERVAL", 0.05)
    loads: list[int] = []

    async def load() -> Answer:
        loads.append(1)
        return Answer("http_error", 404)

    async def scenario() -> list[str]:
        store = QueueStore(connect(redis_url))
        upstreams = Upstreams(AutoPipeline(redis_url))
        store.follow(FetchCachePurges(store.redis, upstreams))
        await store.start()
        key = upstreams.key_prefixes["loyalty_routing/lookup"] + "a-caller"
        try:
            hows = [(await upstreams.cached(key, "api", 60, 0, load))[1] for _ in range(2)]
            # A purge of the key whose message never came: Redis has it no more.
            await store.redis.unlink(key)
            await store.redis.incr(PURGES_KEY)
            deadline = time.monotonic() + 5
            while (how := (await upstreams.cached(key, "api", 60, 0, load))[1]) == "hit":
                assert time.monotonic() < deadline, "the missed purge was never noticed"
                await asyncio.sleep(0.01)
            return [*hows, how]
        finally:
            await store.close()
            assert upstreams.pipeline is not None
            await upstreams.pipeline.close()

    assert asyncio.run(scenario()) == ["miss", "hit", "miss"]
    assert len(loads) == 2


def test_an_answer_loaded_across_a_purge_of_its_caller_is_not_kept() -> None:
    """A lookup already under way when the purge arrives may bring back the answer the purge
    was for (asked before the data was fixed): it serves its own call, but is not kept, and
    the next call looks up again rather than join it."""
    upstreams = Upstreams(None)
    key = upstreams.key_prefixes["loyalty_routing/lookup"] + "a-caller"

    async def scenario() -> list[tuple[str, int | None]]:
        release = asyncio.Event()
        answers = [Answer("http_error", 404), Answer("ok", 200, {"loyaltyStatus": "gold"})]

        async def load() -> Answer:
            answer = answers.pop(0)
            if answer.status == 404:
                await release.wait()  # asked before the data was fixed, back after the purge
            return answer

        in_flight = asyncio.ensure_future(upstreams.cached(key, "api", 60, 0, load))
        await asyncio.sleep(0)
        upstreams.forget([key])
        seen = [await asyncio.wait_for(upstreams.cached(key, "api", 60, 0, load), 5)]
        release.set()
        seen += [await in_flight, await upstreams.cached(key, "api", 60, 0, load)]
        return [(how, answer.status) for answer, how in seen]

    assert asyncio.run(scenario()) == [("miss", 200), ("miss", 404), ("hit", 200)]


def test_a_process_starts_on_each_steps_current_generation(redis_url: str) -> None:
    """Answers from before a whole step's purge are still in Redis: a process starting must
    never read them, not even before its listener has caught up."""
    with redis.Redis.from_url(redis_url) as client:
        client.hset(GENERATIONS_KEY, "loyalty_routing/lookup", 3)

    async def prefix_once_started() -> str:
        store = QueueStore(connect(redis_url))
        upstreams = Upstreams(None)
        store.follow(FetchCachePurges(store.redis, upstreams))
        try:
            await store.start()
            return upstreams.key_prefixes["loyalty_routing/lookup"]
        finally:
            await store.close()

    assert asyncio.run(prefix_once_started()) == "ivr:fetch:loyalty_routing/lookup:3:"


# --- `ivr cache purge` against `ivr serve --workers 2` ------------------------------------------

@pytest.fixture
def workers(newcomer_serve: Callable[..., Served]) -> Served:
    server = newcomer_serve("--workers", "2", IVR_ADMIN_TOKEN=ADMIN, TWILIO_AUTH_TOKEN=TOKEN)
    server.env.update(IVR_ADMIN_URL=server.url, IVR_ADMIN_TOKEN=ADMIN)
    return server


def routed_by_each_worker(server: Served, caller: str) -> dict[str, set[str]]:
    """Worker (its trace's instance) -> the queues it routed `caller` to, calling until both
    workers have answered (connections at once, so that both accept some)."""
    seen: dict[str, set[str]] = {}
    deadline = time.monotonic() + 30
    with admin(server) as client, ThreadPoolExecutor(8) as pool:
        while len(seen) < 2:
            assert time.monotonic() < deadline, f"only {sorted(seen)} answered"
            answers = list(pool.map(lambda _: FakeTwilio(server.url).call(caller), range(8)))
            assert all(answer.status_code == 200 for answer in answers)
            for queue, instance in _instances(client, answers):
                seen.setdefault(instance, set()).add(queue)
    return seen


def _instances(client: httpx.Client, answers: list[httpx.Response]) -> list[tuple[str, str]]:
    """(queue, instance) of each answered call, from its trace (written a moment later)."""
    found = []
    for answer in answers:
        sid = answer.request.content.decode().split("CallSid=")[1].split("&")[0]
        deadline = time.monotonic() + 5
        while not (calls := client.get("/calls", params={"sid": sid}).json()["calls"]):
            assert time.monotonic() < deadline, f"no trace of {sid}"
            time.sleep(0.02)
        found.append((calls[0]["route"], calls[0]["instance"]))
    return found


def cache_cli(server: Served, *args: str) -> tuple[int, str, str]:
    result = run_ivr(server.cwd, server.env, "cache", "purge", *args)
    return result.returncode, result.stdout.strip(), result.stderr.strip()


def test_ivr_cache_purge_makes_every_worker_forget_a_caller_then_a_whole_step(
    workers: Served, loyalty_data: LoyaltyApi,
) -> None:
    caller = CALLERS[0]
    assert set().union(*routed_by_each_worker(workers, caller).values()) == {"standard"}
    looked_up = lookups_of(loyalty_data, caller)
    loyalty_data.tiers[caller] = "gold"
    assert set().union(*routed_by_each_worker(workers, caller).values()) == {"standard"}
    assert lookups_of(loyalty_data, caller) == looked_up  # each worker answered from its copy

    status, out, err = cache_cli(workers, "loyalty_routing", "lookup", "--caller", caller)
    assert status == 0, err
    assert out == (f"loyalty_routing/lookup: purged the cached answer for {caller} on every "
                   "instance; the caller's next call looks up again")
    # Both workers: had one kept its copy, it would still route the caller to standard.
    assert list(routed_by_each_worker(workers, caller).values()) == [{"gold"}, {"gold"}]

    others = CALLERS[1:4]
    for other in others:
        assert set().union(*routed_by_each_worker(workers, other).values()) == {"standard"}
    loyalty_data.tiers.update(dict.fromkeys(others, "platinum"))
    status, out, err = cache_cli(workers, "loyalty_routing", "lookup")
    assert status == 0, err
    assert out.startswith("loyalty_routing/lookup: purged every cached answer on every instance")
    for other in others:
        assert list(routed_by_each_worker(workers, other).values()) == [{"platinum"}] * 2

    with admin(workers) as client:
        entries = client.get("/audit").json()["entries"]
    who = f"{getpass.getuser()} (admin token)"
    assert [(e["action"], e["who"], e["caller"]) for e in entries] == [
        ("purge", who, None), ("purge", who, mask_number(caller))]

    status, _, err = cache_cli(workers, "loyalty_routng", "lookup")
    assert status == 1
    assert err == "ivr: 404: 'loyalty_routng' is not a flow: did you mean 'loyalty_routing'?"
    status, _, err = cache_cli(workers, "loyalty_routing", "lookup", "--caller", "555-CALL-ME")
    assert status == 1
    assert "422: invalid input\n  caller: '555-CALL-ME' is not a phone number" in err
    with redis.Redis(unix_socket_path=str(workers.cwd / "var" / "redis" / "redis.sock")) as db:
        assert db.llen("{ivr}:audit") == 2  # refusals are not purges
