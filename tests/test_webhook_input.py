"""Bad input gets a short 4xx, never a 5xx or a traceback, and is never routed."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware

from ivr.app import create_app
from ivr.channels.inbound import MAX_FIELDS, BadWebhook, parse_form, request_headers
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


# --- the form parser reads what urllib's parse_qsl reads -------------------------------------

_PIECES = ["From", "To", "Body", "%2B1555", "a+b", "%E2%9C%93", "%C3%A9t%C3%A9", "%", "%4", "%zz",
           "%FF", "%C3", "=", "==", "&", "&&", "", " ", "+", "%26", "%3D", "é", "\u2603"]


def _qsl(body: bytes) -> list[tuple[str, str]] | str:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                         encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except ValueError:
        return "more than"


def _parsed(body: bytes) -> list[tuple[str, str]] | str:
    try:
        return parse_form(body)
    except BadWebhook as exc:
        return "not valid UTF-8" if "UTF-8" in exc.reason else "more than"


def test_the_form_parser_reads_bodies_as_parse_qsl_does() -> None:
    rng = random.Random(11)
    bodies = [b"", b"&", b"a", b"a=", b"=a", b"a=1&a=2", b"\xff=1", b"a=%FF", b"a=%C3%A9",
              b"&".join([b"k=v"] * MAX_FIELDS), b"&".join([b"k=v"] * (MAX_FIELDS + 1)),
              urlencode(call_params(L.GOLD)).encode()]
    bodies += ["".join(rng.choices(_PIECES, k=rng.randint(1, 30))).encode() for _ in range(2000)]
    outcomes = set()
    for body in bodies:
        expected = _qsl(body)
        assert _parsed(body) == expected, body
        outcomes.add(expected if isinstance(expected, str) else "pairs")
    assert outcomes == {"pairs", "not valid UTF-8", "more than"}


def test_headers_are_found_by_lower_case_name_and_the_first_of_a_repeated_one_wins() -> None:
    raw = [(b"x-twilio-signature", b"first"), (b"content-type", b"a/b"),
           (b"x-twilio-signature", b"second")]
    ours, starlettes = request_headers({"headers": raw}), Headers(raw=raw)
    for name in ("X-Twilio-Signature", "Content-Type", "Host"):
        assert ours.get(name.lower()) == starlettes.get(name)
    assert ours.get("x-twilio-signature") == "first"


def test_a_middleware_added_after_create_app_is_refused_rather_than_passed_by_webhooks(
    make_settings,
) -> None:
    """Webhooks are answered outside Starlette's stack, composed in create_app: a middleware
    added later would see every request but the webhooks, so Starlette refuses it."""
    app = create_app(make_settings())
    with pytest.raises(RuntimeError, match="Cannot add middleware"):
        app.add_middleware(GZipMiddleware)
