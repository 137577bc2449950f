"""Bad input gets a short 4xx, never a 5xx or a traceback, and is never routed."""

from __future__ import annotations

import httpx
import pytest

from tests import loyalty_api as L
from tests.twilio_client import FakeTwilio, call_params, message_params, sign


@pytest.mark.parametrize(
    ("path", "params", "reason"),
    [
        ("/twilio/voice", {k: v for k, v in call_params(L.GOLD).items() if k != "From"},
         "missing From"),
        ("/twilio/voice", {**call_params(L.GOLD), "From": "   "}, "missing From"),
        ("/twilio/voice", {k: v for k, v in call_params(L.GOLD).items() if k != "CallSid"},
         "missing CallSid"),
        ("/twilio/messaging", {k: v for k, v in message_params(L.GOLD).items()
                               if k != "MessageSid"}, "missing MessageSid"),
        ("/twilio/voice", {**call_params(L.GOLD), "From": "+1555\x00"}, "invalid From"),
        ("/twilio/voice", {**call_params(L.GOLD), "From": "+1" * 200}, "invalid From"),
        ("/twilio/voice", {**call_params(L.GOLD), "CallSid": "CA" + "1" * 100}, "invalid CallSid"),
    ],
    ids=["no-from", "blank-from", "no-callsid", "no-messagesid", "control-char", "huge-from",
         "huge-sid"],
)
def test_a_signed_webhook_missing_what_routing_needs_is_a_400_naming_it(
    twilio: FakeTwilio, path: str, params: dict[str, str], reason: str
) -> None:
    response = twilio.post(path, params)
    assert response.status_code == 400
    assert reason in response.text
    assert "Traceback" not in response.text


def test_a_body_over_the_limit_is_a_413(twilio: FakeTwilio) -> None:
    params = call_params(L.GOLD, Padding="x" * 70_000)
    response = twilio.post("/twilio/voice", params)
    assert response.status_code == 413


def test_a_chunked_body_over_the_limit_is_a_413(twilio: FakeTwilio) -> None:
    def chunks():
        yield b"From=%2B15550000001&CallSid=CA1&Padding="
        for _ in range(100):
            yield b"x" * 1024

    response = httpx.post(twilio.url("/twilio/voice"), content=chunks(), headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"})
    assert response.status_code == 413


def test_too_many_parameters_is_a_400(twilio: FakeTwilio) -> None:
    params = call_params(L.GOLD, **{f"P{i}": "1" for i in range(300)})
    response = twilio.post("/twilio/voice", params)
    assert response.status_code == 400
    assert "parameters" in response.text


def test_a_body_that_is_not_a_form_is_a_415(twilio: FakeTwilio) -> None:
    params = call_params(L.GOLD)
    response = httpx.post(twilio.url("/twilio/voice"), json=params, headers={
        "X-Twilio-Signature": sign(twilio.url("/twilio/voice"), params)})
    assert response.status_code == 415


def test_binary_garbage_is_a_400(twilio: FakeTwilio) -> None:
    response = httpx.post(twilio.url("/twilio/voice"), content=bytes(range(256)) * 4, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"})
    assert response.status_code == 400


def test_get_on_a_webhook_is_a_405_and_healthz_answers(twilio: FakeTwilio) -> None:
    assert httpx.get(twilio.url("/twilio/voice")).status_code == 405
    health = httpx.get(twilio.url("/healthz"))
    assert health.status_code == 200 and health.text == "ok"


def test_a_caller_with_a_withheld_number_is_still_routed(twilio: FakeTwilio) -> None:
    response = twilio.call("Anonymous")
    assert response.status_code == 200
    assert "<Sip>sip:standard@queues.example.com</Sip>" in response.text
