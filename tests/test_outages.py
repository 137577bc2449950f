"""Outage edges, against a real Redis the test stops (SIGSTOP) or kills, and the real loyalty API
made to fail: a message is answered with a route within the README's bound while Redis hangs,
the state writes Redis missed are written again or counted lost, and a conversation handed off
because the lookup failed is routed afresh once the lookup works again."""

from __future__ import annotations

import secrets
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ivr.redis.embedded import EmbeddedRedis
from tests import loyalty_api as L
from tests.loyalty_api import LoyaltyApi
from tests.servers import ServerThread
from tests.twilio_client import FakeTwilio, message_params, sign

GOLD_DESK = "+15550100101"  # the shipped gold queue's message_to
STANDARD_DESK = "+15550100103"
# The README's figure for a message while Redis hangs; the test's ceiling is a generous one
# that proves "no hang", well above what is measured.
MESSAGE_BOUND_WHILE_REDIS_HANGS = 3.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own, which it may stop, continue or kill."""
    server = EmbeddedRedis(tmp_path / "own-redis")
    server.start()
    try:
        yield server
    finally:
        process = server._process  # noqa: SLF001 (the test owns it)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
        server.stop()


def message(twilio: FakeTwilio, sender: str, body: str = "Where is my order?"
            ) -> httpx.Response:
    """A message as Twilio posts it: signed, with its idempotency token."""
    params = message_params(sender, body)
    headers = {"X-Twilio-Signature": sign(twilio.url("/twilio/messaging"), params),
               "I-Twilio-Idempotency-Token": secrets.token_hex(16)}
    return httpx.post(twilio.url("/twilio/messaging"), data=params, headers=headers, timeout=30)


def texts(response: httpx.Response) -> list[tuple[str | None, str]]:
    assert response.status_code == 200, response.text
    return [(m.get("to"), m.findtext("Body") or m.text or "")
            for m in ET.fromstring(response.text).findall("Message")]


def forwarded_to(response: httpx.Response) -> list[str | None]:
    return [to for to, _ in texts(response) if to is not None]


# --- the messaging worst case while Redis hangs -----------------------------------------------

def test_a_message_is_answered_with_a_route_within_the_bound_while_redis_hangs(
    own_redis: EmbeddedRedis, make_settings, start_server
) -> None:
    """Each of the message's Redis round trips (the lock, the retry lookup, the session, the
    fetch cache, the state save, the retry record) waited its own timeout on a hung Redis:
    4.75 s. Once Redis has not answered in time, the rest fail at once until it answers."""
    twilio = FakeTwilio(start_server(make_settings(redis_url=own_redis.url)).url)
    assert forwarded_to(message(twilio, L.GOLD)) == [GOLD_DESK]
    process = own_redis._process  # noqa: SLF001 (the test owns it)
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        for sender in (L.PLATINUM, L.SILVER, L.GOLD_SHOUTED):
            started = time.monotonic()
            answered = message(twilio, sender)
            took = time.monotonic() - started
            assert forwarded_to(answered), answered.text  # a route, not an apology
            assert took < MESSAGE_BOUND_WHILE_REDIS_HANGS, f"{sender}: {took:.2f} s"
    finally:
        process.send_signal(signal.SIGCONT)
    # Redis answers again: a new conversation's hand-off is kept, and the next message sticks.
    sender = "+15550000111"
    deadline = time.monotonic() + 15
    while True:
        first = message(twilio, sender)
        later = message(twilio, sender, "and another thing")
        if texts(later) == [(STANDARD_DESK, f"{sender} (no tier): and another thing")]:
            break
        assert time.monotonic() < deadline, "state was never kept again after Redis answered"
        sender = f"+1555000{int(sender[-4:]) + 1:04d}"
    assert forwarded_to(first) == [STANDARD_DESK]


# --- a hand-off made because the lookup failed ------------------------------------------------

@pytest.fixture
def loyalty_of_its_own() -> Iterator[tuple[LoyaltyApi, str]]:
    """The tests' loyalty API, on a server of this test's own: it is made to fail."""
    api = LoyaltyApi()
    with ServerThread(api.app()) as server:
        yield api, server.url


def test_a_conversation_handed_off_because_the_lookup_failed_is_routed_afresh_once_it_works(
    loyalty_of_its_own: tuple[LoyaltyApi, str], make_settings, start_server
) -> None:
    """A gold customer's conversation handed to the fallback (standard) queue during a
    loyalty-API outage stayed there for good: every later message went to standard. Each one
    now tries the lookup again, and the first that gets an answer routes the conversation."""
    api, url = loyalty_of_its_own
    twilio = FakeTwilio(start_server(make_settings(loyalty_api_url=url)).url)
    api.down = True
    assert texts(message(twilio, L.GOLD, "hello")) == [
        (None, "Thanks for your message! One of our team will reply shortly."),
        (STANDARD_DESK, f"{L.GOLD} (no tier): hello")]
    asked = len(api.requests)
    # Still down: tried again, and forwarded to the same queue without a new acknowledgement.
    assert texts(message(twilio, L.GOLD, "anyone?")) == [
        (STANDARD_DESK, f"{L.GOLD} (no tier): anyone?")]
    assert len(api.requests) > asked

    api.down = False
    assert texts(message(twilio, L.GOLD, "still waiting")) == [
        (None, "Thanks for your message! A gold member specialist will reply shortly."),
        (GOLD_DESK, f"{L.GOLD} (gold): still waiting")]
    # Routed on the lookup's answer: the hand-off sticks, with no new lookup.
    asked = len(api.requests)
    assert texts(message(twilio, L.GOLD, "thanks")) == [(GOLD_DESK, f"{L.GOLD} (gold): thanks")]
    # A caller the API does not know (404) is routed on that answer: it sticks too.
    message(twilio, L.UNKNOWN, "hi")
    assert texts(message(twilio, L.UNKNOWN, "me again")) == [
        (STANDARD_DESK, f"{L.UNKNOWN} (no tier): me again")]
    assert len(api.requests) == asked + 1
