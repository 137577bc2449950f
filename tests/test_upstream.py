"""Fetch steps against a real API and a real Redis: the shared cache, single-flight,
stale-while-revalidate, retries within the deadline, and the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ivr.flows import upstream as upstream_module
from ivr.flows.http import AiohttpClient
from ivr.flows.loader import load_flows
from ivr.flows.model import Flow
from ivr.flows.runner import Outcome, run_flow
from ivr.flows.step import Contact, Run
from ivr.flows.steps.fetch import FetchStep
from ivr.flows.upstream import Breaker, Upstreams
from ivr.redis.autopipeline import AutoPipeline
from ivr.redis.fetch_cache import RedisSharedAnswers
from tests import loyalty_api as L
from tests.servers import free_port


def lookup_flow(**fetch: Any) -> Flow:
    step = {"kind": "fetch", "url": "{{ settings.api }}/customers/{{ params.Who | urlencode }}",
            "save": {"tier": "loyaltyStatus"}, "next": "done", "on_error": "done", **fetch}
    return Flow.from_data({"trigger": {"channels": ["voice"]}, "fallback_queue": "standard",
                           "steps": {"lookup": step, "done": {"kind": "end"}}}, name="lookup")


async def lookups(flow: Flow, api: str, upstreams: Upstreams, callers: list[str],
                  deadline: float = 3.0, http: AiohttpClient | None = None
                  ) -> list[dict[str, Any]]:
    """Run `flow` once per caller, all at once; each run's `steps.lookup` and `vars`. Pass
    `http` for requests left running in the background, which must outlive the lookups."""
    if http is None:
        async with AiohttpClient() as own:
            return await lookups(flow, api, upstreams, callers, deadline, own)

    async def one(who: str) -> dict[str, Any]:
        run = Run(contact=Contact("+1555", "+1555", "voice"), params={"Who": who},
                  settings={"api": api}, http=http, upstreams=upstreams,
                  deadline=asyncio.get_running_loop().time() + deadline)
        outcome: Outcome = await run_flow(flow, run)
        assert outcome.fallback_reason is None
        return {**run.steps["lookup"], "tier": run.vars.get("tier")}
    return list(await asyncio.gather(*(one(who) for who in callers)))


def requests_for(api, number: str) -> int:
    return sum(1 for path, _ in api.requests if path.endswith(number.replace("+", "%2B")))


@pytest.fixture
def upstreams(redis_url: str):
    def make(**kwargs: Any) -> Upstreams:
        return Upstreams(RedisSharedAnswers(AutoPipeline(redis_url)), **kwargs)
    return make


def test_a_cached_answer_is_served_to_the_next_lookup_without_a_request(loyalty, upstreams):
    api, url = loyalty
    flow = lookup_flow(cache="1m")

    async def twice() -> list[dict[str, Any]]:
        one = upstreams()
        first = await lookups(flow, url, one, [L.GOLD])
        assert isinstance(one.shared, RedisSharedAnswers)
        await one.shared.pipeline.close()  # the cache write goes out after the answer: let it land
        # A second process (its own Upstreams) shares the cache through Redis.
        return first + await lookups(flow, url, upstreams(), [L.GOLD])

    api.requests.clear()
    first, second = asyncio.run(twice())
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert second["tier"] == "gold" and second["outcome"] == "ok"
    assert requests_for(api, L.GOLD) == 1


def test_an_unknown_caller_is_cached_but_a_failing_api_is_not(loyalty, upstreams) -> None:
    api, url = loyalty
    flow = lookup_flow(cache="1m")
    api.requests.clear()
    shared = upstreams()
    results = asyncio.run(_sequential(flow, url, shared, [L.UNKNOWN, L.UNKNOWN, L.BROKEN,
                                                          L.BROKEN]))
    assert [r["cache"] for r in results] == ["miss", "hit", "miss", "miss"]
    assert requests_for(api, L.UNKNOWN) == 1 and requests_for(api, L.BROKEN) == 2


async def _sequential(flow: Flow, url: str, shared: Upstreams, callers: list[str]
                      ) -> list[dict[str, Any]]:
    return [(await lookups(flow, url, shared, [who]))[0] for who in callers]


def test_concurrent_lookups_of_one_caller_make_one_request(loyalty, upstreams) -> None:
    api, url = loyalty
    api.requests.clear()
    results = asyncio.run(lookups(lookup_flow(cache="1m"), url, upstreams(), [L.SLOW] * 20))
    assert requests_for(api, L.SLOW) == 1
    assert sorted(r["cache"] for r in results) == ["coalesced"] * 19 + ["miss"]
    assert all(r["tier"] == "gold" for r in results)


def test_a_stale_answer_is_served_at_once_while_a_refresh_runs(loyalty, upstreams) -> None:
    api, url = loyalty
    flow = lookup_flow(cache="1s", stale_while_revalidate="1m")

    async def scenario() -> tuple[dict[str, Any], float, int]:
        shared = upstreams()
        async with AiohttpClient() as http:
            await lookups(flow, url, shared, [L.SLOW], http=http)
            await asyncio.sleep(1.1)
            started = time.monotonic()
            stale = (await lookups(flow, url, shared, [L.SLOW], http=http))[0]
            took = time.monotonic() - started
            await asyncio.sleep(0.5)  # the refresh (200 ms upstream) completes in the background
        return stale, took, requests_for(api, L.SLOW)

    api.requests.clear()
    stale, took, requests = asyncio.run(scenario())
    assert stale["cache"] == "stale" and stale["tier"] == "gold"
    assert took < 5  # bounded; "stale" above is what says it was not waited for
    assert requests == 2


def test_a_fault_is_retried_while_the_deadline_allows(loyalty, upstreams) -> None:
    api, url = loyalty
    api.requests.clear()
    result = asyncio.run(lookups(lookup_flow(retries=2), url, upstreams(), [L.BROKEN]))[0]
    assert result["outcome"] == "http_error" and result["status"] == 500
    assert requests_for(api, L.BROKEN) == 3
    api.requests.clear()
    hung = asyncio.run(lookups(lookup_flow(retries=3, timeout=2), url, upstreams(), [L.HANGS],
                               deadline=0.6))[0]
    assert hung["outcome"] in ("timeout", "no_time")
    assert requests_for(api, L.HANGS) == 1  # no time was left for another try


def test_a_dead_upstream_opens_its_breaker_and_costs_nothing_until_a_probe(
    loyalty, upstreams
) -> None:
    api, url = loyalty
    flow = lookup_flow(timeout=0.2)
    shared = upstreams(failure_threshold=3, open_seconds=0.5)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], float, dict[str, Any]]:
        failures = [(await lookups(flow, url, shared, [L.HANGS]))[0] for _ in range(3)]
        started = time.monotonic()
        refused = (await lookups(flow, url, shared, [L.GOLD]))[0]  # same upstream, now open
        took = time.monotonic() - started
        await asyncio.sleep(0.6)
        probe = (await lookups(flow, url, shared, [L.GOLD]))[0]
        return failures, refused, took, probe

    failures, refused, took, probe = asyncio.run(scenario())
    assert [f["outcome"] for f in failures] == ["timeout"] * 3
    assert refused["outcome"] == "breaker_open"  # no request made, nothing waited for
    assert took < 5
    assert probe["outcome"] == "ok" and probe["tier"] == "gold"
    assert shared.breaker(url.removeprefix("http://")).state == "closed"


def test_the_breaker_lets_one_probe_through_when_half_open() -> None:
    now = [0.0]
    breaker = Breaker("api", threshold=2, open_seconds=10, clock=lambda: now[0])
    breaker.failed()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10
    assert breaker.allow() and breaker.state == "half-open"
    assert not breaker.allow()  # one probe at a time
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 20
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def test_a_cache_setting_is_checked_at_load() -> None:
    with pytest.raises(ValueError, match="stale_while_revalidate needs `cache`"):
        lookup_flow(stale_while_revalidate="1m")
    with pytest.raises(ValueError, match="between 1 seconds and 7 days"):
        lookup_flow(cache="30d")


def test_a_hit_leaves_the_other_answers_kept_in_the_process(loyalty, monkeypatch) -> None:
    api, url = loyalty
    monkeypatch.setattr(upstream_module, "LOCAL_ENTRIES", 3)
    flow = lookup_flow(cache="1m")
    local_only = Upstreams(None)  # no Redis: what the process keeps is all there is
    callers = [L.GOLD, L.PLATINUM, L.UNKNOWN]
    api.requests.clear()
    results = asyncio.run(_sequential(flow, url, local_only, [*callers, L.UNKNOWN, *callers]))
    assert [r["cache"] for r in results] == ["miss"] * 3 + ["hit"] * 4
    assert sum(requests_for(api, number) for number in callers) == 3


def test_a_probe_cut_short_lets_the_next_request_probe(loyalty, upstreams) -> None:
    api, url = loyalty
    flow = lookup_flow(timeout=5)
    shared = upstreams(failure_threshold=1, open_seconds=0.1)

    async def scenario() -> dict[str, Any]:
        await lookups(flow, url, shared, [L.BROKEN])  # one fault: the circuit opens
        await asyncio.sleep(0.15)
        probe = asyncio.ensure_future(lookups(flow, url, shared, [L.HANGS]))
        await asyncio.sleep(0.2)
        probe.cancel()  # the probe's call is cut short (shutdown, a caller gone)
        with pytest.raises(asyncio.CancelledError):
            await probe
        return (await lookups(flow, url, shared, [L.GOLD]))[0]

    after = asyncio.run(scenario())
    assert after["outcome"] == "ok" and after["tier"] == "gold"  # not breaker_open for good


def test_the_reference_flow_looks_callers_up_as_the_readme_says() -> None:
    """README, "The reference flow": 2 s timeout, one retry, cached 5 minutes and used up to a
    day while refreshed; the circuit opens after 5 faults in a row, for 10 s."""
    flow = load_flows(Path(__file__).resolve().parent.parent / "flows").flows["loyalty_routing"]
    lookup = flow.steps["lookup"]
    assert isinstance(lookup, FetchStep)
    assert (lookup.timeout, lookup.retries) == (2, 1)
    assert (lookup.cache, lookup.stale_while_revalidate) == (timedelta(minutes=5),
                                                             timedelta(days=1))
    defaults = Upstreams(None)
    assert (defaults.failure_threshold, defaults.open_seconds) == (5, 10)


def test_lookups_go_to_the_api_while_the_shared_cache_is_down(loyalty) -> None:
    """An unreachable Redis: the cache is an optimisation, the lookup goes to the API and the
    flow goes on (the API's answer still kept in the process)."""
    api, url = loyalty
    flow = lookup_flow(cache="1m")

    async def scenario() -> list[dict[str, Any]]:
        nowhere = AutoPipeline(f"redis://127.0.0.1:{free_port()}")
        unreachable = Upstreams(RedisSharedAnswers(nowhere))
        results = await lookups(flow, url, unreachable, [L.GOLD])
        results += await lookups(flow, url, unreachable, [L.GOLD])
        await nowhere.close()
        return results

    api.requests.clear()
    results = asyncio.run(scenario())
    assert [(r["outcome"], r["cache"], r["tier"]) for r in results] == [
        ("ok", "miss", "gold"), ("ok", "hit", "gold")]
    assert requests_for(api, L.GOLD) == 1
