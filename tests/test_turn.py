"""One turn of a flow, as the server and `ivr simulate` both take it: the session in, the
outcome and the session after it out, through the JSON that Redis keeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ivr.flows.loader import load_flow_texts, load_flows
from ivr.flows.model import Flow
from ivr.flows.step import Channel, Contact
from ivr.flows.upstream import Upstreams
from ivr.queues import Queue, load_queue_file
from ivr.session import Session
from ivr.simulator import HttpMocks
from ivr.turn import Surroundings, TakenTurn, take_turn

ROOT = Path(__file__).resolve().parent.parent
CALLER = "+15550000302"
QUEUES = dict(load_queue_file(ROOT / "sip_config" / "queues.yaml").queues)
FLOW = load_flows(ROOT / "flows", queue_names=QUEUES).flows["language_routing"]
SURROUNDINGS = Surroundings({}, {}, HttpMocks({}), deadline=5.0)


def turn(session: Session, answer: str | None = None, *, flow: Flow = FLOW,
         channel: Channel = "voice", queues: dict[str, Queue] = QUEUES) -> TakenTurn:
    """A turn as the server takes it: a session that went through a turn was stored."""
    params = {"From": CALLER, "To": "+15005550103", "CallSid": "CA" + "0" * 32}
    return asyncio.run(take_turn(flow, session, Contact(CALLER, CALLER, channel), params,
                                 SURROUNDINGS, queues.get, answer=answer,
                                 resumed=session.turn > 0))


def test_a_turn_counts_itself_and_a_session_through_json_resumes_at_its_question() -> None:
    asked = turn(Session(FLOW.name))
    assert (asked.session.turn, asked.session.waiting_at) == (1, "ask_language")
    assert asked.routed is None
    stored = Session.from_json(asked.session.to_json())
    assert stored == asked.session
    routed = turn(stored, answer="3")
    assert routed.outcome.trace[0] == "ask_language"  # resumed where it waited
    assert (routed.session.turn, routed.session.waiting_at, routed.routed) == (2, None, "french")
    assert routed.run.saved_fields == {"language": "french"}


def test_a_wrong_answer_asks_again_and_the_session_keeps_the_attempts() -> None:
    asked = turn(Session(FLOW.name))
    again = turn(Session.from_json(asked.session.to_json()), answer="9")
    assert again.session.waiting_at == "ask_language"
    assert asked.session.state["attempts"] == {"ask_language": 0}
    assert again.session.state["attempts"] == {"ask_language": 1}  # one answer tried
    assert again.session.turn == 2


def test_a_session_keeps_the_contact_memory_it_started_with() -> None:
    remembered = Session(FLOW.name, memory={"first_seen": "2026-01-01T00:00:00Z",
                                            "language": "spanish"})
    taken = turn(remembered)
    assert taken.routed == "spanish" and taken.session.memory == remembered.memory


def test_a_key_a_later_version_stored_in_the_session_is_kept_through_a_turn() -> None:
    stored = Session.from_json(turn(Session(FLOW.name)).session.to_json()[:-1]
                               + b',"journey":"j7"}')
    after = Session.from_json(turn(stored, answer="9").session.to_json())
    assert after.turn == 2 and after.later_keys == {"journey": "j7"}


def test_a_session_keeps_the_flows_version_it_started_on_through_a_turn() -> None:
    started = Session(FLOW.name, flow_version=3)
    asked = turn(started)
    assert asked.kept and Session.from_json(asked.session.to_json()).flow_version == 3


# What is kept after a turn, decided in the turn, so that `ivr simulate` and the golden tests
# run the decision the server makes.

def answered(answer: str, **given: object) -> TakenTurn:
    asked = turn(Session(FLOW.name), **given)  # type: ignore[arg-type]
    assert asked.kept and not asked.resumed  # a question keeps its session
    return turn(Session.from_json(asked.session.to_json()), answer, **given)  # type: ignore[arg-type]


def test_a_call_routed_after_a_question_keeps_its_session_with_the_route() -> None:
    routed = answered("3", flow=FLOW.model_copy(update={"unanswered": None}))
    assert routed.resumed and routed.kept  # a retried answer is replayed from it
    assert (routed.session.routed_to, routed.session.route_step) == (
        "french", routed.outcome.trace[-1])


def test_a_call_routed_at_once_keeps_its_session_only_for_the_flows_unanswered_step() -> None:
    known = Session(FLOW.name, memory={"language": "english"})  # routed without a question
    assert turn(known).kept and FLOW.unanswered is not None
    ended = turn(known, flow=FLOW.model_copy(update={"unanswered": None}))
    assert ended.routed == "english" and not ended.kept and ended.session.routed_to is None


def test_a_conversation_stays_with_a_queue_that_takes_messages_and_ends_with_one_that_does_not(
) -> None:
    handed_off = answered("3", channel="messaging")
    assert handed_off.kept and handed_off.session.routed_to == "french"
    no_messages = {**QUEUES, "french": QUEUES["french"].model_copy(update={"message_to": None})}
    dropped = answered("3", channel="messaging", queues=no_messages)
    assert dropped.routed == "french" and not dropped.kept and dropped.session.routed_to is None


LOYALTY = load_flows(ROOT / "flows", queue_names=QUEUES).flows["loyalty_routing"]
LOOKUP_URL = f"http://loyalty.test/customers/%2B{CALLER[1:]}"


@pytest.mark.parametrize(("answer", "reroute_from"), [
    ({"status": 503, "body": "down"}, "lookup"), ("timeout", "lookup"), ("refused", "lookup"),
    ({"status": 200, "body": "<html>"}, "lookup"),
    ({"status": 404, "json": {}}, None), ({"status": 200, "json": {"loyaltyStatus": "gold"}}, None),
], ids=["5xx", "timeout", "refused", "not-json", "404", "gold"])
def test_a_messaging_hand_off_is_decided_again_from_a_lookup_its_upstream_did_not_answer(
    answer: object, reroute_from: str | None
) -> None:
    surroundings = Surroundings({"loyalty_api_url": "http://loyalty.test"}, {},
                                HttpMocks({LOOKUP_URL: answer}), deadline=5.0)
    params = {"From": CALLER, "To": "+15005550006", "MessageSid": "SM" + "0" * 32}
    taken = asyncio.run(take_turn(LOYALTY, Session(LOYALTY.name),
                                  Contact(CALLER, CALLER, "messaging"), params, surroundings,
                                  QUEUES.get))
    assert taken.session.routed_to is not None
    assert taken.session.reroute_from == reroute_from
    assert Session.from_json(taken.session.to_json()) == taken.session
    # A call's session after its route is not a hand-off: it says nothing of the kind.
    call = asyncio.run(take_turn(LOYALTY, Session(LOYALTY.name),
                                 Contact(CALLER, CALLER, "voice"), params, surroundings,
                                 QUEUES.get, resumed=True))
    assert call.session.reroute_from is None


def test_a_hand_off_after_an_open_circuit_or_the_deadline_is_decided_again() -> None:
    upstreams = Upstreams(None, failure_threshold=1)
    upstreams.breaker("loyalty.test").failed()  # open
    params = {"From": CALLER, "To": "+15005550006", "MessageSid": "SM" + "0" * 32}
    contact = Contact(CALLER, CALLER, "messaging")
    open_circuit = Surroundings({"loyalty_api_url": "http://loyalty.test"}, {},
                                HttpMocks({}), deadline=5.0, upstreams=upstreams)
    taken = asyncio.run(take_turn(LOYALTY, Session(LOYALTY.name), contact, params,
                                  open_circuit, QUEUES.get))
    assert taken.run.steps["lookup"]["outcome"] == "breaker_open"
    assert taken.session.reroute_from == "lookup"
    # The deadline before the lookup could even start: the flow's fallback, decided again.
    no_time = Surroundings({"loyalty_api_url": "http://loyalty.test"}, {}, HttpMocks({}),
                           deadline=0.0)
    late = asyncio.run(take_turn(LOYALTY, Session(LOYALTY.name), contact, params, no_time,
                                 QUEUES.get))
    assert late.routed == "standard" and late.session.reroute_from == "lookup"


LOOKUP_THEN_ASK = load_flow_texts({"lookup_then_ask.yaml": """
name: lookup_then_ask
trigger: {channels: [messaging], numbers: ["+15005550199"]}
fallback_queue: standard
steps:
  lookup:
    kind: fetch
    url: "http://loyalty.test/customers/{{ contact.number | urlencode }}"
    timeout: 1
    save: {tier: loyaltyStatus}
    next: ask_desk
    on_error: ask_desk
  ask_desk:
    kind: ask
    prompt: "Reply 1 for sales, 2 for support."
    expect: choice
    options: {sales: ["1"], support: ["2"]}
    save: desk
    next: by_desk
    on_exhausted: to_sales
  by_desk:
    kind: branch
    value: vars.desk
    cases: [{equals: support, next: to_support}]
    else: to_sales
  to_sales: {kind: route, queue: sales}
  to_support: {kind: route, queue: support}
"""}, queue_names=QUEUES).flows["lookup_then_ask"]


def test_a_hand_off_decided_on_an_answer_sticks_after_a_lookup_that_failed_a_turn_before(
) -> None:
    """The session restores every earlier turn's step records: the lookup that timed out in
    the first turn once made the hand-off the contact chose in the second decided again at each
    later message, which asked the question again instead of forwarding it."""
    surroundings = Surroundings({}, {}, HttpMocks({
        f"http://loyalty.test/customers/%2B{CALLER[1:]}": "timeout"}), deadline=5.0)
    params = {"From": CALLER, "To": "+15005550199", "MessageSid": "SM" + "0" * 32}
    contact = Contact(CALLER, CALLER, "messaging")
    asked = asyncio.run(take_turn(LOOKUP_THEN_ASK, Session(LOOKUP_THEN_ASK.name), contact,
                                  params, surroundings, QUEUES.get))
    assert asked.session.waiting_at == "ask_desk"
    assert asked.run.steps["lookup"]["outcome"] == "timeout"
    chose = asyncio.run(take_turn(LOOKUP_THEN_ASK, Session.from_json(asked.session.to_json()),
                                  contact, params, surroundings, QUEUES.get, answer="2",
                                  resumed=True))
    assert chose.routed == "support" and chose.session.routed_to == "support"
    assert chose.session.reroute_from is None
