"""The engine without HTTP: whatever a flow does, a run ends in a route or a deliberate end."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import yaml
from prometheus_client import REGISTRY

from ivr.flows.actions import Hangup, RouteToQueue, Say
from ivr.flows.http import AiohttpClient
from ivr.flows.model import Flow
from ivr.flows.runner import Outcome, run_flow
from ivr.flows.step import Contact, Run, Step
from ivr.metrics import NOT_A_STEP
from tests import loyalty_api as L


def flow(steps: str) -> Flow:
    return Flow.from_data(
        {"trigger": {"channels": ["voice", "messaging"]}, "fallback_queue": "standard",
         "steps": yaml.safe_load(steps)},
        name="test",
    )


def run(flow_: Flow, channel: str = "voice", deadline: float = 3.0,
        params: dict[str, str] | None = None, **settings: Any) -> Outcome:
    async def go() -> Outcome:
        async with AiohttpClient() as http:
            loop = asyncio.get_running_loop()
            the_run = Run(
                contact=Contact("+15551234567", "+15551234567", channel),  # type: ignore[arg-type]
                params=params or {"Body": "hello"},
                settings=settings,
                http=http,
                deadline=loop.time() + deadline,
            )
            return await run_flow(flow_, the_run)

    return asyncio.run(go())


def test_say_uses_the_channel_override_and_skips_empty_text() -> None:
    steps = """
    greet: {kind: say, text: "Hello {{ contact.number }}", messaging: "", next: bye}
    bye: {kind: end}
    """
    assert run(flow(steps)).actions == [Say("Hello +15551234567"), Hangup()]
    assert run(flow(steps), channel="messaging").actions == [Hangup()]


def test_branch_matches_ignoring_case_and_space_and_none_never_matches() -> None:
    steps = """
    pick:
      kind: branch
      value: params.Tier
      cases:
        - {equals: [gold, goud], next: to_gold}
        - {when: "params.Vip == 'yes'", next: to_vip}
      else: to_standard
    to_gold: {kind: route, queue: gold}
    to_vip: {kind: route, queue: vip}
    to_standard: {kind: route, queue: standard}
    """
    routed = lambda **p: run(flow(steps), params=p).actions[-1].queue  # noqa: E731
    assert routed(Tier="  GOUD ") == "gold"
    assert routed(Tier="silver", Vip="yes") == "vip"
    assert routed(Tier="silver") == "standard"
    assert routed() == "standard"


def test_the_route_message_is_rendered_for_a_messaging_hand_off_only() -> None:
    steps = """
    to_gold: {kind: route, queue: gold, message: "{{ contact.number }} says {{ params.Body }}"}
    """
    outcome = run(flow(steps), channel="messaging")
    assert outcome.actions == [RouteToQueue("gold", "+15551234567 says hello")]
    assert outcome.trace == ["to_gold"] and outcome.fallback_reason is None
    assert run(flow(steps)).actions == [RouteToQueue("gold", "")]  # a call needs no note


def test_a_template_the_sandbox_refuses_routes_to_the_fallback_queue() -> None:
    steps = """
    greet: {kind: say, text: "{{ contact.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", next: to_gold}
    to_gold: {kind: route, queue: gold}
    """
    outcome = run(flow(steps))
    assert outcome.actions[-1].queue == "standard"
    assert "SecurityError" in outcome.fallback_reason


def test_a_hanging_fetch_is_cut_short_by_the_deadline_and_takes_its_error_exit(loyalty) -> None:
    steps = """
    greet: {kind: say, text: One moment, next: lookup}
    lookup:
      kind: fetch
      url: "{{ settings.api }}/customers/{{ params.Who | urlencode }}"
      timeout: 10
      next: to_gold
      on_error: to_standard
    to_gold: {kind: route, queue: gold}
    to_standard: {kind: route, queue: standard}
    """
    started = time.monotonic()
    outcome = run(flow(steps), deadline=0.6, params={"Who": L.HANGS}, api=loyalty[1])
    assert time.monotonic() - started < 5  # not the fetch's own 10 s
    assert outcome.actions[0] == Say("One moment")
    assert outcome.actions[-1].queue == "standard"
    assert outcome.fallback_reason is None  # the fetch timed out in time for the flow to route


def test_a_fetch_with_no_time_left_takes_its_error_exit_without_a_request() -> None:
    steps = """
    lookup: {kind: fetch, url: "http://127.0.0.1:9/x", next: to_gold, on_error: to_standard}
    to_gold: {kind: route, queue: gold}
    to_standard: {kind: route, queue: standard}
    """
    outcome = run(flow(steps), channel="messaging", deadline=0.05)
    assert outcome.actions == [RouteToQueue("standard", "+15551234567: hello")]
    assert outcome.fallback_reason is None


def test_a_fetch_url_that_is_not_http_takes_the_error_exit() -> None:
    steps = """
    lookup: {kind: fetch, url: "{{ settings.api }}/x", next: to_gold, on_error: to_standard}
    to_gold: {kind: route, queue: gold}
    to_standard: {kind: route, queue: standard}
    """
    outcome = run(flow(steps), api=None)
    assert outcome.actions[-1].queue == "standard"


class SlowStep(Step):
    """A step slower than any deadline, standing in for a future kind that misbehaves."""

    kind: Literal["slow"] = "slow"

    async def run(self, run: Run) -> str | None:
        await asyncio.sleep(10)
        return None


def test_a_step_still_running_at_the_deadline_routes_to_the_fallback_after_what_was_said() -> None:
    base = flow("""
    greet: {kind: say, text: One moment, next: to_gold}
    to_gold: {kind: route, queue: gold}
    """)
    steps = {"greet": base.steps["greet"].model_copy(update={"next": "slow"}), "slow": SlowStep()}
    slow_flow = base.model_copy(update={"steps": steps})
    started = time.monotonic()
    outcome = run(slow_flow, deadline=0.3)
    assert time.monotonic() - started < 2
    assert outcome.actions == [Say("One moment"), RouteToQueue("standard", "+15551234567: hello")]
    assert outcome.fallback_reason == "deadline"
    assert outcome.trace == ["greet", "slow"]


def test_a_contact_field_saved_in_one_turn_is_read_in_the_next() -> None:
    steps = """
    note: {kind: set, contact: {language: fr}, next: menu}
    menu: {kind: ask, prompt: "Name?", save: name, next: greet, on_exhausted: bye}
    greet: {kind: say, text: "{{ contact.language }} {{ vars.name }}", next: bye}
    bye: {kind: end}
    """
    first = Run(contact=Contact("+1555", "+1555", "voice"), params={}, settings={},
                http=None, deadline=0)  # type: ignore[arg-type]
    asyncio.run(_advance(flow(steps), first))
    state = first.state()
    second = Run(contact=Contact("+1555", "+1555", "voice"), params={}, settings={},
                 http=None, deadline=0)  # type: ignore[arg-type]
    second.restore(state)
    outcome = asyncio.run(_advance(flow(steps), second, resume_at="menu", answer="Ana"))
    assert outcome.actions[0] == Say("fr Ana")
    assert second.saved_fields == {}  # already saved in the first turn


def test_resuming_at_a_step_the_flow_no_longer_has_counts_an_error_under_no_step_id() -> None:
    """A session from before a deploy that removed its question: the error is counted, but
    ivr_flow_errors_total's step label takes only the flow's step ids (the session's is any
    text)."""
    flow_ = flow("""
    menu: {kind: ask, prompt: "Sales or support?", save: team, next: bye, on_exhausted: bye}
    bye: {kind: end}
    """)

    def errors(step: str) -> float:
        return REGISTRY.get_sample_value(
            "ivr_flow_errors_total", {"flow": "test", "step": step}) or 0.0

    before = errors(NOT_A_STEP), errors("old_menu")
    resumed = Run(contact=Contact("+1555", "+1555", "voice"), params={}, settings={},
                  http=None, deadline=0)  # type: ignore[arg-type]
    outcome = asyncio.run(_advance(flow_, resumed, resume_at="old_menu", answer="1"))
    assert outcome.fallback_reason == "KeyError in step 'old_menu'"
    assert (errors(NOT_A_STEP), errors("old_menu")) == (before[0] + 1, before[1])


async def _advance(flow_: Flow, run_: Run, **resume: str) -> Outcome:
    run_.deadline = asyncio.get_running_loop().time() + 3
    return await run_flow(flow_, run_, **resume)


def test_a_spoken_answer_is_read_without_the_full_stop_speech_recognition_adds() -> None:
    """Twilio's SpeechResult ends with a full stop the caller never said: emails, digits and
    patterns were refused for it (a flow author's walk-through). Typed answers keep theirs."""
    steps = flow("""
    email: {kind: ask, prompt: "Email?", expect: email, save: email, next: digits,
            on_exhausted: done}
    digits: {kind: ask, prompt: "Number?", expect: digits, min_digits: 8, max_digits: 8,
             save: number, next: code, on_exhausted: done}
    code: {kind: ask, prompt: "Code?", expect: regex, pattern: "[A-Z]{2}-[0-9]{3}", save: code,
           next: done, on_exhausted: done}
    done: {kind: end}
    """).steps
    assert steps["email"].interpret("Jane at example dot com.", "voice") == "jane@example.com"
    assert steps["email"].interpret("jane@example.com?", "voice") == "jane@example.com"
    assert steps["digits"].interpret("1234 5678.", "voice") == "12345678"
    assert steps["code"].interpret("AB-123.", "voice") == "AB-123"
    assert steps["code"].interpret("AB-123.", "messaging") is None
    assert steps["email"].interpret(".", "voice") is None
