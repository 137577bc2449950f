"""Calls and conversations across webhooks, over real HTTP with the real store: questions and
answers, Twilio's retries, the sticky hand-off, messages racing, and SIP failover."""

from __future__ import annotations

import asyncio
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
import redis

from tests import loyalty_api as L
from tests.twilio_client import FakeTwilio, call_params, message_params, sign

MENU_NUMBER = "+15005550199"
MENU_FLOW = f"""
trigger: {{channels: [voice, messaging], numbers: ["{MENU_NUMBER}"]}}
fallback_queue: standard
unanswered: sorry
steps:
  menu:
    kind: ask
    prompt: "Press 1 for gold, 2 for platinum."
    messaging: "Reply GOLD or PLATINUM."
    retry_prompt: "Sorry."
    expect: choice
    options: {{gold: ["1", "gold"], platinum: ["2", "platinum"]}}
    save: choice
    max_attempts: 2
    next: pick
    on_exhausted: to_standard
  pick: {{kind: branch, value: vars.choice, cases: [{{equals: gold, next: to_gold}}], else: to_platinum}}
  to_gold: {{kind: route, queue: gold, message: "{{{{ contact.number }}}} chose {{{{ vars.choice }}}}: {{{{ params.Body }}}}"}}
  to_platinum: {{kind: route, queue: platinum}}
  to_standard: {{kind: route, queue: standard}}
  sorry: {{kind: say, text: "Everyone is busy. We will call you back.", next: bye}}
  bye: {{kind: end}}
"""
QUEUES = """
queues:
  gold:
    sip_uri: "sip:gold@queues.example.com"
    fallback_sip_uris: ["sip:gold-backup@queues.example.com"]
    overflow: platinum
    message_to: "+15550100101"
  platinum: {sip_uri: "sip:platinum@queues.example.com", message_to: "+15550100102"}
  standard: {sip_uri: "sip:standard@queues.example.com", message_to: "+15550100103"}
"""
CALLER = "+15550000077"
QUICK_NUMBER = "+15005550198"
# Its unanswered step routes to a "voicemail" queue: a dial that fails from there is the last.
QUICK_FLOW = f"""
trigger: {{channels: [voice, messaging], numbers: ["{QUICK_NUMBER}"]}}
fallback_queue: standard
unanswered: voicemail
steps:
  menu:
    kind: ask
    prompt: "Press 1 for gold."
    expect: choice
    options: {{gold: ["1"]}}
    next: to_gold
    on_exhausted: to_standard
  to_gold: {{kind: route, queue: gold}}
  to_standard: {{kind: route, queue: standard}}
  voicemail: {{kind: route, queue: platinum}}
"""
PLAIN_NUMBER = "+15005550197"
PLAIN_FLOW = f"""
trigger: {{channels: [voice], numbers: ["{PLAIN_NUMBER}"]}}
fallback_queue: standard
steps:
  menu: {{kind: ask, prompt: "Press 1.", expect: choice, options: {{gold: ["1"]}}, next: to_gold, on_exhausted: to_gold}}
  to_gold: {{kind: route, queue: gold}}
"""


@pytest.fixture
def menu(config_dir: Path, make_settings, start_server) -> FakeTwilio:
    for extra in (config_dir / "flows").glob("*.yaml"):
        if extra.name != "loyalty_routing.yaml":
            extra.unlink()  # only the flows these tests are about
    (config_dir / "flows" / "menu.yaml").write_text(MENU_FLOW)
    (config_dir / "flows" / "quick.yaml").write_text(QUICK_FLOW)
    (config_dir / "flows" / "plain.yaml").write_text(PLAIN_FLOW)
    (config_dir / "sip_config" / "queues.yaml").write_text(QUEUES)
    return FakeTwilio(start_server(make_settings()).url)


def gather_url(twiml: str) -> str:
    gather = ET.fromstring(twiml).find("Gather")
    assert gather is not None, twiml
    return gather.get("action")


def sip(twiml: str) -> tuple[str, str]:
    dial = ET.fromstring(twiml).find("Dial")
    assert dial is not None, twiml
    return dial.find("Sip").text, dial.get("action")


def answer(twilio: FakeTwilio, url: str, params: dict[str, str], **given: str) -> httpx.Response:
    return twilio.post(url, {**params, **given})


def test_a_call_is_asked_and_its_keyed_answer_routes_it(menu: FakeTwilio) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    first = menu.post("/twilio/voice", params)
    root = ET.fromstring(first.text)
    gather = root.find("Gather")
    assert gather.get("action") == "/twilio/voice?turn=1" and gather.get("numDigits") == "1"
    assert gather.find("Say").text == "Press 1 for gold, 2 for platinum."
    routed = answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    assert sip(routed.text) == ("sip:gold@queues.example.com",
                                "/twilio/voice/dial?queue=gold&try=0")


def test_a_spoken_answer_routes_and_a_bad_one_is_asked_again_then_exhausted(menu) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    menu.post("/twilio/voice", params)
    spoken = answer(menu, "/twilio/voice?turn=1", params, SpeechResult="Platinum, please.")
    assert sip(spoken.text)[0] == "sip:platinum@queues.example.com"

    params = call_params(CALLER, To=MENU_NUMBER)
    menu.post("/twilio/voice", params)
    again = answer(menu, "/twilio/voice?turn=1", params, Digits="7")
    assert gather_url(again.text) == "/twilio/voice?turn=2"
    assert "Sorry. Press 1" in again.text
    exhausted = answer(menu, "/twilio/voice?turn=2", params)  # silence: no Digits at all
    assert sip(exhausted.text)[0] == "sip:standard@queues.example.com"


def test_a_retried_answer_gets_the_same_twiml_and_does_not_advance(menu: FakeTwilio) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    menu.post("/twilio/voice", params)
    wrong = answer(menu, "/twilio/voice?turn=1", params, Digits="9")
    retried = answer(menu, "/twilio/voice?turn=1", params, Digits="9")
    assert retried.text == wrong.text  # the same re-prompt, not a second failed attempt
    routed = answer(menu, "/twilio/voice?turn=2", params, Digits="2")
    assert sip(routed.text)[0] == "sip:platinum@queues.example.com"


def test_an_idempotency_token_replays_the_first_answer(menu: FakeTwilio) -> None:
    def post(to: str, token: str) -> httpx.Response:
        params = call_params(CALLER, To=to)
        headers = {"I-Twilio-Idempotency-Token": token,
                   "X-Twilio-Signature": sign(menu.url("/twilio/voice"), params)}
        return httpx.post(menu.url("/twilio/voice"), data=params, headers=headers)

    first = post(MENU_NUMBER, "tok-123")
    # A webhook another flow answers otherwise: with the first one's token, only a replay
    # gives the first answer (the menu's question), not its own flow's.
    assert post(PLAIN_NUMBER, "tok-other").text != first.text
    second = post(PLAIN_NUMBER, "tok-123")
    assert first.status_code == second.status_code == 200
    assert second.text == first.text
    assert "turn=1" in gather_url(second.text)


def test_a_conversation_asks_routes_then_sticks_to_the_queue(menu: FakeTwilio, loyalty) -> None:
    def texts(response: httpx.Response) -> list[tuple[str | None, str]]:
        return [(m.get("to"), m.text) for m in ET.fromstring(response.text).findall("Message")]

    sender = "whatsapp:+15550000078"
    opening = menu.post("/twilio/messaging", message_params(sender, "hello", To=MENU_NUMBER))
    assert texts(opening) == [(None, "Reply GOLD or PLATINUM.")]
    chosen = menu.post("/twilio/messaging", message_params(sender, "gold please", To=MENU_NUMBER))
    assert texts(chosen) == [
        (None, "Thanks for your message. One of our team will reply shortly."),
        ("+15550100101", "+15550000078 chose gold: gold please")]
    api, _ = loyalty
    api.requests.clear()
    later = menu.post("/twilio/messaging", message_params(sender, "also my card", To=MENU_NUMBER))
    assert texts(later) == [("+15550100101", "+15550000078 chose gold: also my card")]
    assert api.requests == []  # no new lookup, no new acknowledgement


def test_two_messages_arriving_together_are_both_answered_in_turn(menu: FakeTwilio) -> None:
    sender = "+15550000079"
    menu.post("/twilio/messaging", message_params(sender, "hi", To=MENU_NUMBER))

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            async def send(body: str) -> httpx.Response:
                params = message_params(sender, body, To=MENU_NUMBER)
                headers = {"X-Twilio-Signature": sign(menu.url("/twilio/messaging"), params)}
                return await client.post(menu.url("/twilio/messaging"), data=params,
                                         headers=headers)
            return list(await asyncio.gather(send("platinum"), send("and a question")))

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200]
    chosen, other = responses if "Thanks" in responses[0].text else responses[::-1]
    assert "Thanks for your message" in chosen.text and "+15550100102" in chosen.text
    # The other was handled before (an invalid answer, asked again) or after (forwarded to
    # the queue the first chose): in turn, never both at once, and never lost.
    assert "Sorry. Reply GOLD" in other.text or (
        "+15550000079: and a question" in other.text and "Thanks" not in other.text)
    # Either way the conversation ends handed over, not reset by a racing write.
    later = menu.post("/twilio/messaging", message_params(sender, "still there?", To=MENU_NUMBER))
    assert "+15550000079: still there?" in later.text and "Thanks" not in later.text


def dial_result(twilio: FakeTwilio, params: dict[str, str], queue: str, attempt: int,
                status: str, sip_code: str = "486") -> httpx.Response:
    url = f"/twilio/voice/dial?queue={queue}&try={attempt}"
    return twilio.post(url, {**params, "DialCallStatus": status, "DialSipResponseCode": sip_code,
                             "DialCallSid": "CA" + "9" * 32})


def test_a_busy_queue_fails_over_to_its_fallback_then_its_overflow_then_unanswered(
    menu: FakeTwilio,
) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    menu.post("/twilio/voice", params)
    answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    busy = dial_result(menu, params, "gold", 0, "busy")
    assert sip(busy.text) == ("sip:gold-backup@queues.example.com",
                              "/twilio/voice/dial?queue=gold&try=1")
    no_answer = dial_result(menu, params, "gold", 1, "no-answer", "480")
    assert sip(no_answer.text) == ("sip:platinum@queues.example.com",
                                   "/twilio/voice/dial?queue=gold&try=2")
    failed = dial_result(menu, params, "gold", 2, "failed", "503")
    root = ET.fromstring(failed.text)
    assert root.find("Say").text == "Everyone is busy. We will call you back."
    assert root.find("Hangup") is not None


@pytest.mark.parametrize("status", ["completed", "answered"])
def test_a_connected_call_ends_when_the_agent_hangs_up(menu: FakeTwilio, status: str) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    done = dial_result(menu, params, "gold", 0, status, "200")
    assert [child.tag for child in ET.fromstring(done.text)] == ["Hangup"]


def test_a_canceled_dial_fails_over_like_a_busy_one(menu: FakeTwilio) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    canceled = dial_result(menu, params, "gold", 0, "canceled", "487")
    assert sip(canceled.text) == ("sip:gold-backup@queues.example.com",
                                  "/twilio/voice/dial?queue=gold&try=1")


def test_without_an_unanswered_step_exhausted_failover_apologises(twilio: FakeTwilio) -> None:
    params = call_params("+15550000001")
    failed = dial_result(twilio, params, "gold", 0, "failed", "503")
    root = ET.fromstring(failed.text)
    assert root.find("Say") is not None and root.find("Hangup") is not None


def test_the_dial_action_is_signed_like_any_webhook(menu: FakeTwilio) -> None:
    params = {**call_params(CALLER), "DialCallStatus": "busy"}
    response = httpx.post(menu.url("/twilio/voice/dial?queue=gold&try=0"), data=params,
                          headers={"X-Twilio-Signature": sign(menu.url("/twilio/voice"), params)})
    assert response.status_code == 403


def test_a_session_expires_and_the_call_starts_over(menu: FakeTwilio, redis_url: str) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    menu.post("/twilio/voice", params)
    with redis.Redis.from_url(redis_url) as client:
        ttl = client.ttl(f"ivr:session:voice:{params['CallSid']}")
        assert 0 < ttl <= 600  # the flow's default expire_after
        client.delete(f"ivr:session:voice:{params['CallSid']}")
    late = answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    assert re.search(r"turn=1", gather_url(late.text))  # asked again from the start


def test_a_retried_answer_that_routed_is_replayed_in_a_flow_without_unanswered(menu) -> None:
    params = call_params(CALLER, To=PLAIN_NUMBER)
    menu.post("/twilio/voice", params)
    routed = answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    retried = answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    assert sip(retried.text)[0] == "sip:gold@queues.example.com"
    assert retried.text == routed.text


def test_a_messaging_retry_racing_its_original_is_answered_once(menu: FakeTwilio) -> None:
    sender = "+15550000081"
    menu.post("/twilio/messaging", message_params(sender, "hi", To=MENU_NUMBER))
    params = message_params(sender, "gold", To=MENU_NUMBER)
    headers = {"I-Twilio-Idempotency-Token": "retry-42",
               "X-Twilio-Signature": sign(menu.url("/twilio/messaging"), params)}

    async def twice() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return list(await asyncio.gather(*(client.post(
                menu.url("/twilio/messaging"), data=params, headers=headers) for _ in range(2))))

    first, second = asyncio.run(twice())
    assert first.text == second.text  # the same answer: forwarded to the agent once
    assert first.text.count("+15550100101") == 1


def test_the_unanswered_steps_own_route_is_the_last_one_tried(menu: FakeTwilio) -> None:
    params = call_params(CALLER, To=QUICK_NUMBER)
    menu.post("/twilio/voice", params)
    answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    for attempt in range(3):  # gold, its fallback, its overflow (platinum)
        failed = dial_result(menu, params, "gold", attempt, "busy")
    voicemail = sip(failed.text)
    assert voicemail == ("sip:platinum@queues.example.com",
                         "/twilio/voice/dial?queue=platinum&try=0&last=1")
    # Failed again from there: no loop back into the unanswered step.
    gone = menu.post("/twilio/voice/dial?queue=platinum&try=0&last=1",
                     {**params, "DialCallStatus": "failed"})
    root = ET.fromstring(gone.text)
    assert root.find("Dial") is None and root.find("Hangup") is not None


def test_without_redis_a_flow_that_asks_routes_to_its_fallback_at_once(
    tmp_path: Path, config_dir: Path, make_settings, start_server
) -> None:
    from ivr.redis.embedded import EmbeddedRedis

    for extra in (config_dir / "flows").glob("*.yaml"):
        if extra.name != "loyalty_routing.yaml":
            extra.unlink()
    (config_dir / "flows" / "menu.yaml").write_text(MENU_FLOW)
    (config_dir / "sip_config" / "queues.yaml").write_text(QUEUES)
    own = EmbeddedRedis(tmp_path / "own-redis")
    twilio = FakeTwilio(start_server(make_settings(redis_url=own.start())).url)
    own.stop()
    response = twilio.post("/twilio/voice", call_params(CALLER, To=MENU_NUMBER))
    root = ET.fromstring(response.text)
    assert root.find("Gather") is None  # asking with nowhere to keep the answer would loop
    assert root.find("Dial/Sip").text == "sip:standard@queues.example.com"


def test_contact_memory_is_kept_for_ivr_contact_memory_days_after_a_call(
    redis_url: str, make_settings, start_server
) -> None:
    twilio = FakeTwilio(start_server(make_settings(contact_memory_days=3)).url)
    assert "<Sip>sip:gold@" in twilio.call(L.GOLD).text
    with redis.Redis.from_url(redis_url) as client:
        assert 3 * 86400 - 60 <= client.ttl(f"ivr:contact:{L.GOLD}") <= 3 * 86400


# Sessions as the code before the typed Session wrote them (a dict of eight keys, compact JSON):
# a caller waiting at a question while a rolling upgrade replaces the server is still answered.
STORED_ASKING = ('{"flow":"menu","memory":{},"state":{"vars":{},"steps":{},"attempts":'
                 '{"menu":1},"contact":{}},"turn":1,"twiml":"<Response/>","waiting_at":"menu",'
                 '"routed_to":null,"route_step":null}')
STORED_HANDED_OFF = ('{"flow":"menu","memory":{},"state":{"vars":{"choice":"gold"},"steps":{},'
                     '"attempts":{"menu":1},"contact":{}},"turn":2,"twiml":"<Response/>",'
                     '"waiting_at":null,"routed_to":"gold","route_step":"to_gold"}')


def test_a_session_stored_before_the_upgrade_resumes_at_its_question(
    menu: FakeTwilio, redis_url: str
) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"ivr:session:voice:{params['CallSid']}", STORED_ASKING, ex=600)
    routed = answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    assert sip(routed.text)[0] == "sip:gold@queues.example.com"
    retried = answer(menu, "/twilio/voice?turn=1", params, Digits="1")
    assert retried.text == routed.text  # the session the upgrade wrote replays it


def test_a_conversation_handed_off_before_the_upgrade_stays_with_its_queue(
    menu: FakeTwilio, redis_url: str
) -> None:
    sender = "+15550000082"
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"ivr:session:messaging:{MENU_NUMBER}:{sender}", STORED_HANDED_OFF, ex=600)
    forwarded = menu.post("/twilio/messaging",
                          message_params(sender, "still there?", To=MENU_NUMBER))
    [message] = ET.fromstring(forwarded.text).findall("Message")
    assert message.get("to") == "+15550100101"
    assert message.text == f"{sender} chose gold: still there?"


def test_a_session_is_written_with_the_keys_the_code_before_it_reads(
    menu: FakeTwilio, redis_url: str
) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    menu.post("/twilio/voice", params)
    with redis.Redis.from_url(redis_url) as client:
        stored = json.loads(client.get(f"ivr:session:voice:{params['CallSid']}"))
    assert list(stored) == ["flow", "memory", "state", "turn", "twiml", "waiting_at",
                            "routed_to", "route_step", "flow_version"]
    assert (stored["flow"], stored["turn"], stored["waiting_at"]) == ("menu", 1, "menu")
    assert list(stored["state"]) == ["vars", "steps", "attempts", "contact"]


# A key a later version writes (say, the journey a session belongs to): this version does not
# read it, and must not drop it when it saves the session again, or a call moving between
# instances of the two versions during a rolling upgrade would lose it.
LATER_KEY = ',"journey":"j7","sip":{"headers":["X-Account"]}}'


def test_a_key_of_a_later_version_is_kept_through_a_turn(
    menu: FakeTwilio, redis_url: str
) -> None:
    params = call_params(CALLER, To=MENU_NUMBER)
    key = f"ivr:session:voice:{params['CallSid']}"
    with redis.Redis.from_url(redis_url) as client:
        client.set(key, STORED_ASKING[:-1] + LATER_KEY, ex=600)
        routed = answer(menu, "/twilio/voice?turn=1", params, Digits="1")
        assert sip(routed.text)[0] == "sip:gold@queues.example.com"
        stored = json.loads(client.get(key))
    assert (stored["turn"], stored["routed_to"]) == (2, "gold")  # saved by this turn
    assert (stored["journey"], stored["sip"]) == ("j7", {"headers": ["X-Account"]})


def test_a_key_of_a_later_version_is_kept_when_a_hand_off_is_saved_again(
    menu: FakeTwilio, redis_url: str
) -> None:
    sender = "+15550000083"
    key = f"ivr:session:messaging:{MENU_NUMBER}:{sender}"
    with redis.Redis.from_url(redis_url) as client:
        client.set(key, STORED_HANDED_OFF[:-1] + LATER_KEY, ex=5)
        menu.post("/twilio/messaging", message_params(sender, "still there?", To=MENU_NUMBER))
        assert client.ttl(key) > 5  # saved again, for another expire_after
        stored = json.loads(client.get(key))
    assert (stored["journey"], stored["sip"]) == ("j7", {"headers": ["X-Account"]})
