"""Only webhooks signed by Twilio for the public URL get an answer; the rest get 403."""

from __future__ import annotations

import logging
import random

import httpx
import pytest
from starlette.datastructures import Headers, ImmutableMultiDict
from twilio.request_validator import HMAC_SHA1, HMAC_SHA256, RequestValidator

from ivr.local_tokens import read_local_token, read_or_create_local_token
from ivr.settings import Settings
from ivr.twilio_security import WebhookVerifier, resolve_auth_token
from tests import loyalty_api as L
from tests.twilio_client import TOKEN, FakeTwilio, call_params, message_params, sign


def post(url: str, params: dict[str, str], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, data=params, headers=headers, timeout=10)


@pytest.mark.parametrize("path", ["/twilio/voice", "/twilio/messaging"])
def test_a_webhook_without_a_signature_is_forbidden(twilio: FakeTwilio, path: str, caplog) -> None:
    params = call_params(L.GOLD) if path.endswith("voice") else message_params(L.GOLD)
    with caplog.at_level(logging.WARNING, logger="ivr"):
        response = post(twilio.server + path, params, {})
    assert response.status_code == 403
    assert "X-Twilio-Signature" in caplog.text


def test_a_webhook_signed_with_another_token_is_forbidden_and_the_token_is_not_logged(
    twilio: FakeTwilio, caplog
) -> None:
    params = call_params(L.GOLD)
    signature = sign(twilio.url("/twilio/voice"), params, token="someone-elses-token")
    with caplog.at_level(logging.DEBUG):
        response = post(twilio.url("/twilio/voice"), params, {"X-Twilio-Signature": signature})
    assert response.status_code == 403
    assert "signature does not match" in caplog.text
    assert TOKEN not in caplog.text and "someone-elses-token" not in caplog.text


def test_a_tampered_body_is_forbidden(twilio: FakeTwilio) -> None:
    params = call_params(L.UNKNOWN)
    signature = sign(twilio.url("/twilio/voice"), params)
    tampered = {**params, "From": L.GOLD}
    response = post(twilio.url("/twilio/voice"), tampered, {"X-Twilio-Signature": signature})
    assert response.status_code == 403


def test_an_added_parameter_breaks_the_signature(twilio: FakeTwilio) -> None:
    params = call_params(L.GOLD)
    signature = sign(twilio.url("/twilio/voice"), params)
    response = post(twilio.url("/twilio/voice"), {**params, "Injected": "1"},
                    {"X-Twilio-Signature": signature})
    assert response.status_code == 403


def test_a_signature_for_another_url_is_forbidden(twilio: FakeTwilio) -> None:
    params = call_params(L.GOLD)
    signature = sign(twilio.url("/twilio/messaging"), params)
    response = post(twilio.url("/twilio/voice"), params, {"X-Twilio-Signature": signature})
    assert response.status_code == 403


def test_behind_a_proxy_the_signature_is_checked_against_the_public_url(
    make_settings, start_server
) -> None:
    server = start_server(make_settings(public_url="https://ivr.example.com/"))
    proxied = FakeTwilio(server.url, public_url="https://ivr.example.com")
    assert proxied.call(L.GOLD).status_code == 200
    # The public URL with its default port is what Twilio sometimes signs: accepted too.
    assert FakeTwilio(server.url, public_url="https://ivr.example.com:443").call(L.GOLD
                                                                                ).status_code == 200
    # Signed for the server's private address, as a misconfigured client would: rejected.
    assert FakeTwilio(server.url).call(L.GOLD).status_code == 403


def test_the_query_string_is_part_of_the_signed_url(make_settings, start_server) -> None:
    server = start_server(make_settings(public_url="https://ivr.example.com"))
    params = call_params(L.GOLD)
    signed = sign("https://ivr.example.com/twilio/voice?tenant=a", params)
    ok = post(server.url + "/twilio/voice?tenant=a", params, {"X-Twilio-Signature": signed})
    assert ok.status_code == 200
    moved = post(server.url + "/twilio/voice?tenant=b", params, {"X-Twilio-Signature": signed})
    assert moved.status_code == 403


def test_without_twilio_auth_token_a_local_token_is_generated_and_required(
    make_settings, start_server, config_dir
) -> None:
    settings = make_settings(twilio_auth_token=None)
    server = start_server(settings)
    token_file = config_dir / "var" / "local_twilio_auth_token"
    local_token = token_file.read_text()
    assert len(local_token) == 64
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert FakeTwilio(server.url, token=local_token).call(L.GOLD).status_code == 200
    params = call_params(L.GOLD)
    assert post(server.url + "/twilio/voice", params, {}).status_code == 403
    assert FakeTwilio(server.url, token=TOKEN).call(L.GOLD).status_code == 403


def test_the_local_token_is_stable_and_the_real_token_wins(tmp_path) -> None:
    first = read_or_create_local_token(tmp_path / "token", "a test")
    assert read_or_create_local_token(tmp_path / "token", "a test") == first
    assert read_local_token(tmp_path / "token") == first
    settings = Settings(_env_file=None, data_dir=tmp_path, twilio_auth_token="real")
    assert resolve_auth_token(settings) == "real"


def test_reading_a_local_token_that_is_not_there_makes_none(tmp_path) -> None:
    assert read_local_token(tmp_path / "var" / "token") is None
    assert list(tmp_path.iterdir()) == []


def test_a_body_that_is_not_utf8_is_a_400_before_any_signature_check(twilio: FakeTwilio) -> None:
    body = b"From=%FF%FE&CallSid=CA1"
    response = httpx.post(twilio.url("/twilio/voice"), content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"})
    assert response.status_code == 400
    assert "UTF-8" in response.text


# --- the verdict is twilio's own ------------------------------------------------------------

_URLS = ["https://ivr.example.com/twilio/voice", "https://ivr.example.com:443/twilio/voice",
         "http://127.0.0.1:8000/twilio/voice?turn=2", "http://ivr.example.com/twilio/voice",
         "https://ivr.example.com/twilio/voice/dial?queue=gold&try=1&last=1",
         "https://ivr.example.com:8443/twilio/messaging"]
_TEXTS = ["", " ", "+15551230000", "whatsapp:+447700900123", "Hé! 你好 🙂", "a&b=c", "%41",
          "line\nbreak", "tab\there", "x" * 300, "Gold", "gold"]


def _random_pairs(rng: random.Random) -> list[tuple[str, str]]:
    names = ["From", "To", "CallSid", "Body", "Digits", "SpeechResult", "Ä", "a", "A", "_"]
    return [(rng.choice(names), rng.choice(_TEXTS)) for _ in range(rng.randint(0, 30))]


def _twilio_verdict(token: str, url: str, pairs: list[tuple[str, str]], signature: str,
                    algorithm: str) -> bool:
    return RequestValidator(token).validate(url, ImmutableMultiDict(pairs), signature,
                                            algorithm=algorithm)


def test_the_verdict_matches_twilios_request_validator_on_random_requests() -> None:
    rng = random.Random(5)
    verifier = WebhookVerifier(TOKEN, None)
    agreed = {True: 0, False: 0}
    for _ in range(600):
        pairs = _random_pairs(rng)
        url = rng.choice(_URLS)
        algorithm = rng.choice([HMAC_SHA1, HMAC_SHA256])
        # Signed for this URL, for the same URL with or without its port, for another URL, by
        # another token, for other parameters, or garbage.
        signer = RequestValidator(rng.choice([TOKEN, TOKEN, TOKEN, "another-token"]))
        signed_url = rng.choice([url, url.replace(":443", ""), url.replace(".com/", ".com:443/"),
                                 rng.choice(_URLS)])
        signed_pairs = pairs if rng.random() < 0.8 else _random_pairs(rng)
        signature = signer.compute_signature(signed_url, ImmutableMultiDict(signed_pairs),
                                             algorithm)
        if rng.random() < 0.05:
            signature = rng.choice(["", "garbage", signature[:-2], "é" + signature])
        headers = Headers({"X-Twilio-Signature": signature,
                           "X-Twilio-Webhooks-Signature-Settings": f"algorithm={algorithm}"})
        expected = bool(signature) and _twilio_verdict(TOKEN, url, pairs, signature, algorithm)
        assert (verifier.rejection(url, pairs, headers) is None) == expected, (url, pairs)
        # As webhooks call it: told whether a name repeats, so that repeats are looked for
        # only then.
        repeats = len(dict(pairs)) != len(pairs)
        assert (verifier.rejection(url, pairs, headers, repeats) is None) == expected
        agreed[expected] += 1
    assert agreed[True] > 200 and agreed[False] > 100  # both verdicts were exercised


def test_repeated_parameters_are_signed_as_twilio_signs_them() -> None:
    pairs = [("Media", "b"), ("Media", "a"), ("Media", "b"), ("From", "+15551230000")]
    url = _URLS[0]
    signature = RequestValidator(TOKEN).compute_signature(url, ImmutableMultiDict(pairs))
    headers = Headers({"X-Twilio-Signature": signature})
    assert WebhookVerifier(TOKEN, None).rejection(url, pairs, headers) is None
    # Twilio signs each distinct value once: a repeat changes nothing, a missing value does.
    assert WebhookVerifier(TOKEN, None).rejection(url, pairs[1:], headers) is None
    assert WebhookVerifier(TOKEN, None).rejection(url, pairs[::2], headers) is not None


def test_an_unknown_signature_algorithm_is_refused_and_named() -> None:
    headers = Headers({"X-Twilio-Signature": "x",
                       "X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_MD5"})
    rejection = WebhookVerifier(TOKEN, None).rejection(_URLS[0], [], headers)
    assert rejection is not None and "HMAC_MD5" in rejection
