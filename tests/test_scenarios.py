"""The example flows end to end: real signed webhooks, the real server, Redis and a real CRM.

Each flow answers on its own number (flows/*.yaml `trigger.numbers`); a question on voice is a
<Gather> whose answer is posted back to its action URL with the same CallSid, and on messaging
the contact's next message is the answer. The server's clock is real, so where the answer depends
on the time of day the flow also runs through the simulator, with the clock frozen.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ivr.flows.loader import load_flow_file
from ivr.queues import load_queue_file
from ivr.settings import Settings
from ivr.simulator import simulate
from tests.servers import ServerThread
from tests.twilio_client import FakeTwilio, call_params, message_params

ROOT = Path(__file__).resolve().parent.parent

VIP_BY_EMAIL = "+15005550101"
TEAM_CHOICE = "+15005550102"
LANGUAGE_ROUTING = "+15005550103"
SHIFT_ROUTING = "+15005550104"
NEW_VS_RETURNING = "+15005550105"

SIP = {queue: f"sip:{queue}@queues.example.com" for queue in (
    "vip", "regular", "manager", "sales", "support", "operator", "english", "spanish", "french",
    "onboarding", "standard")}
SIP["day_team"] = "sip:day-team@queues.example.com"
SIP["night_team"] = "sip:night-team@queues.example.com"
AGENTS = {"vip": "+15550100104", "regular": "+15550100105", "manager": "+15550100106",
          "sales": "+15550100107", "spanish": "+15550100111", "onboarding": "+15550100115",
          "standard": "+15550100103"}

MENU = ("Thanks for calling. For sales, press 1 or say sales. "
        "For support, press 2 or say support.")
CRM_TOKEN = "crm-token-for-tests"  # IVR_SECRET_CRM_TOKEN
ASK_EMAIL = "Hi! To find your account, please reply with the email address you signed up with."


# --- a CRM, served at the loyalty API's base URL ----------------------------------------------

@dataclass
class Crm:
    """GET /crm/customers?email=... answers {"customerType": ...}; an unknown email is a 404."""

    customers: dict[str, str] = field(default_factory=lambda: {
        "jane@example.com": "vip", "bob@example.com": "regular"})
    emails: list[str] = field(default_factory=list)  # the email of each lookup, decoded
    authorizations: list[str | None] = field(default_factory=list)  # of each lookup

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/crm/customers", self.customer)])

    async def customer(self, request: Request) -> Response:
        email = request.query_params.get("email", "")
        self.emails.append(email)
        self.authorizations.append(request.headers.get("authorization"))
        kind = self.customers.get(email)
        if kind is None:
            return JSONResponse({"error": "no such customer"}, status_code=404)
        return JSONResponse({"customerType": kind, "name": "Test Customer"})


@pytest.fixture(scope="module")
def crm() -> Iterator[tuple[Crm, str]]:
    api = Crm()
    with ServerThread(api.app()) as server:
        yield api, server.url


@pytest.fixture
def twilio(crm: tuple[Crm, str], make_settings: Callable[..., Settings],
           start_server: Callable[..., ServerThread]) -> FakeTwilio:
    crm[0].emails.clear()
    crm[0].authorizations.clear()
    return FakeTwilio(start_server(make_settings(
        loyalty_api_url=crm[1], secrets={"crm_token": CRM_TOKEN})).url)


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


# --- reading TwiML ----------------------------------------------------------------------------

def twiml(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    return ET.fromstring(response.content)


def dialled(response: httpx.Response) -> str:
    """The SIP URI a voice answer dials (exactly one <Dial><Sip>)."""
    dials = twiml(response).findall("Dial")
    assert len(dials) == 1, response.text
    return dials[0].find("Sip").text


def said(response: httpx.Response) -> list[str]:
    """What a voice answer says, outside and inside a <Gather>, in order."""
    return [say.text for say in twiml(response).iter("Say")]


def question(response: httpx.Response) -> tuple[str, str]:
    """(the <Gather>'s prompt, the path its answer is posted to) of a voice answer."""
    root = twiml(response)
    gather = root.find("Gather")
    assert gather is not None and root.find("Dial") is None, response.text
    assert gather.get("action").startswith("/twilio/voice?turn="), response.text
    return gather.find("Say").text, gather.get("action")


def messages(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(to, text) of each <Message> of a messaging answer; None is the customer."""
    root = twiml(response)
    assert root.find("Dial") is None
    return [(m.get("to"), m.text or "") for m in root.findall("Message")]


# --- conversations ----------------------------------------------------------------------------

class Call:
    """One call: the first webhook, then each answer to the question it is asked, same CallSid."""

    def __init__(self, twilio: FakeTwilio, caller: str, number: str) -> None:
        self.twilio = twilio
        self.params = call_params(caller, To=number)
        self.response = twilio.post("/twilio/voice", self.params)

    def answer(self, digits: str | None = None, speech: str | None = None) -> httpx.Response:
        _, action = question(self.response)
        params = {**self.params, "CallStatus": "in-progress"}
        if digits is not None:
            params["Digits"] = digits
        if speech is not None:
            params.update(SpeechResult=speech, Confidence="0.92")
        self.response = self.twilio.post(action, params)
        return self.response

    def dial_result(self, status: str) -> httpx.Response:
        """Twilio reporting the outcome of the <Dial> the call was last given."""
        action = twiml(self.response).find("Dial").get("action")
        params = {**self.params, "CallStatus": "in-progress", "DialCallStatus": status,
                  "DialSipResponseCode": "486"}
        self.response = self.twilio.post(action, params)
        return self.response


def text(twilio: FakeTwilio, sender: str, number: str, body: str) -> list[tuple[str | None, str]]:
    return messages(twilio.post("/twilio/messaging", message_params(sender, body, To=number)))


# --- team choice ------------------------------------------------------------------------------

def test_team_choice_asks_and_a_caller_pressing_1_is_dialled_to_sales(twilio) -> None:
    call = Call(twilio, "+15550001001", TEAM_CHOICE)
    assert question(call.response)[0] == MENU
    assert 'numDigits="1"' in call.response.text  # one key is a full answer
    response = call.answer(digits="1")
    assert said(response) == ["Connecting you to sales."]
    assert dialled(response) == SIP["sales"]


@pytest.mark.parametrize("speech", ["Support, please.", "I need help with my router"])
def test_team_choice_understands_spoken_words(twilio, speech: str) -> None:
    call = Call(twilio, "+15550001002", TEAM_CHOICE)
    assert dialled(call.answer(speech=speech)) == SIP["support"]


def test_team_choice_on_messaging_asks_and_hands_the_opening_message_to_the_team(twilio) -> None:
    sender = "+15550001003"
    assert text(twilio, sender, TEAM_CHOICE, "Hi, I'd like a quote for 20 seats") == [
        (None, "Hi! Is this about sales or support? Reply SALES or SUPPORT.")]
    assert text(twilio, sender, TEAM_CHOICE, "sales") == [
        (None, "Thanks! Our sales team will reply shortly."),
        (AGENTS["sales"], f"{sender} (sales): Hi, I'd like a quote for 20 seats")]
    # Handed over: later messages go to the same team as they are, without a new question.
    assert text(twilio, sender, TEAM_CHOICE, "Also, do you invoice in EUR?") == [
        (AGENTS["sales"], f"{sender} (sales): Also, do you invoice in EUR?")]


def test_team_choice_asks_three_times_then_puts_the_caller_through_to_an_operator(twilio) -> None:
    call = Call(twilio, "+15550001004", TEAM_CHOICE)
    assert question(call.answer(digits="9"))[0] == f"Sorry, I didn't catch that. {MENU}"
    assert question(call.answer(speech="sales or support"))[0].startswith("Sorry")
    response = call.answer()  # silence: Twilio posts the Gather with no Digits
    assert said(response) == ["Let me put you through to an operator."]
    assert dialled(response) == SIP["operator"]


def test_team_choice_tells_the_caller_when_every_agent_line_is_busy(twilio) -> None:
    call = Call(twilio, "+15550001005", TEAM_CHOICE)
    assert dialled(call.answer(digits="2")) == SIP["support"]
    root = twiml(call.dial_result("busy"))
    assert [say.text for say in root.iter("Say")] == [
        "Sorry, everyone is busy right now. Please call again in a few minutes. Goodbye."]
    assert root.find("Hangup") is not None and root.find("Dial") is None


# --- VIP by email -----------------------------------------------------------------------------

@pytest.mark.parametrize(("email", "queue", "label"),
                         [("jane@example.com", "vip", "VIP, jane@example.com"),
                          ("Bob@Example.com", "regular", "bob@example.com")])
def test_vip_by_email_asks_once_then_looks_the_remembered_email_up_in_the_crm(
    twilio, crm, store, email: str, queue: str, label: str
) -> None:
    api, _ = crm
    sender = "+15550001101"
    ack = {"vip": "Thanks! A member of our VIP team will reply shortly.",
           "regular": "Thanks! One of our team will reply shortly."}[queue]
    assert text(twilio, sender, VIP_BY_EMAIL, "My order never arrived") == [(None, ASK_EMAIL)]
    assert text(twilio, sender, VIP_BY_EMAIL, email) == [
        (None, ack), (AGENTS[queue], f"{sender} ({label}): My order never arrived")]
    assert store.hget(f"ivr:contact:{sender}", "email") == email.lower()

    # A new conversation later (the hand-off has expired): no question, straight to the desk.
    store.delete(f"ivr:session:messaging:{VIP_BY_EMAIL}:{sender}")
    assert text(twilio, sender, VIP_BY_EMAIL, "Hello again") == [
        (None, ack), (AGENTS[queue], f"{sender} ({label}): Hello again")]
    assert api.emails == [email.lower()] * 2
    # The CRM gets its own token, the secret, and never the loyalty API's.
    assert api.authorizations == [f"Bearer {CRM_TOKEN}"] * 2


def test_vip_by_email_an_email_the_crm_does_not_know_goes_to_the_regular_desk(
    twilio, crm
) -> None:
    sender = "+15550001102"
    text(twilio, sender, VIP_BY_EMAIL, "Hi")
    replies = text(twilio, sender, VIP_BY_EMAIL, "nobody+tag@example.org")
    assert replies[1] == (AGENTS["regular"], f"{sender} (nobody+tag@example.org): Hi")
    assert crm[0].emails == ["nobody+tag@example.org"]  # the "+" survives the query string


def test_vip_by_email_three_replies_without_an_email_go_to_the_manager(twilio, crm) -> None:
    api, _ = crm
    sender = "+15550001103"
    retry = f"Sorry, that doesn't look like an email address. {ASK_EMAIL}"
    assert text(twilio, sender, VIP_BY_EMAIL, "I need help") == [(None, ASK_EMAIL)]
    assert text(twilio, sender, VIP_BY_EMAIL, "I'd rather not") == [(None, retry)]
    assert text(twilio, sender, VIP_BY_EMAIL, "why?") == [(None, retry)]
    assert text(twilio, sender, VIP_BY_EMAIL, "jane at example") == [
        (None, "No problem, I'm passing you to a manager who will reply shortly."),
        (AGENTS["manager"], f"{sender} (no email given): I need help")]
    assert api.emails == []


# --- language routing -------------------------------------------------------------------------

def test_language_is_asked_once_and_remembered_for_the_next_call_and_message(twilio) -> None:
    caller = "+15550001201"
    call = Call(twilio, caller, LANGUAGE_ROUTING)
    assert question(call.response)[0] == (
        "For English, press 1. Para español, oprima 2. Pour le français, appuyez sur 3.")
    assert dialled(call.answer(digits="2")) == SIP["spanish"]

    again = Call(twilio, caller, LANGUAGE_ROUTING)
    assert said(again.response) == ["Le comunicamos con un agente."]
    assert dialled(again.response) == SIP["spanish"]
    # Contact memory is per contact, not per channel: a message is not asked either.
    assert text(twilio, caller, LANGUAGE_ROUTING, "Hola") == [
        (None, "¡Gracias! Nuestro equipo le responderá en breve."),
        (AGENTS["spanish"], f"{caller} (español): Hola")]


@pytest.mark.parametrize(("speech", "queue"), [("français", "french"), ("English", "english")])
def test_language_can_be_said(twilio, speech: str, queue: str) -> None:
    call = Call(twilio, "+15550001202", LANGUAGE_ROUTING)
    assert dialled(call.answer(speech=speech)) == SIP[queue]


# --- new vs returning -------------------------------------------------------------------------

def test_a_new_caller_goes_to_onboarding_and_comes_back_to_their_usual_queue(
    twilio, store
) -> None:
    caller = "+15550001301"
    first = Call(twilio, caller, NEW_VS_RETURNING).response
    assert said(first) == ["Welcome! Our onboarding team will help you get started."]
    assert dialled(first) == SIP["onboarding"]
    assert store.hget(f"ivr:contact:{caller}", "usual_queue") == "standard"

    second = Call(twilio, caller, NEW_VS_RETURNING).response
    assert said(second) == ["Welcome back! Connecting you now."]
    assert dialled(second) == SIP["standard"]

    store.hset(f"ivr:contact:{caller}", "usual_queue", "sales")  # as a CRM sync would
    assert dialled(Call(twilio, caller, NEW_VS_RETURNING).response) == SIP["sales"]


def test_a_returning_customer_messaging_is_handed_to_their_usual_queue(twilio, store) -> None:
    sender = "+15550001302"
    assert text(twilio, sender, NEW_VS_RETURNING, "Hi")[1][0] == AGENTS["onboarding"]
    store.delete(f"ivr:session:messaging:{NEW_VS_RETURNING}:{sender}")
    assert text(twilio, sender, NEW_VS_RETURNING, "About my renewal") == [
        (None, "Welcome back! We'll reply shortly."),
        (AGENTS["standard"], f"{sender} (returning): About my renewal")]


def test_a_busy_vip_line_overflows_to_the_manager(twilio, store) -> None:
    caller = "+15550001303"
    store.hset(f"ivr:contact:{caller}", mapping={
        "first_seen": "2026-01-01T00:00:00+00:00", "usual_queue": "vip"})
    call = Call(twilio, caller, NEW_VS_RETURNING)
    assert dialled(call.response) == SIP["vip"]
    assert dialled(call.dial_result("no-answer")) == SIP["manager"]


# --- shift routing ----------------------------------------------------------------------------

CLOSED = "Thanks for calling. We're closed right now."


def assert_closed(root: ET.Element) -> None:
    """The after-hours answer: the opening hours, then the call ends without a dial."""
    assert [say.text for say in root.iter("Say")][0].startswith(CLOSED)
    assert root.find("Hangup") is not None and root.find("Dial") is None


# The server's clock is the real one: the times are fixed through the simulator, on the same flow.
@pytest.mark.parametrize(("now", "queue"), [
    ("2026-11-23T15:00:00Z", "day_team"),  # Monday 10:00 in New York
    ("2026-11-23T23:30:00Z", "night_team"),  # Monday 18:30
    ("2026-11-24T04:00:00Z", None),  # Monday 23:00: closed
], ids=["day shift", "evening shift", "closed"])
def test_shift_routing_routes_by_the_new_york_time_of_the_call(now: str, queue: str | None
                                                               ) -> None:
    flow = load_flow_file(ROOT / "flows" / "shift_routing.yaml")
    queues = load_queue_file(ROOT / "sip_config" / "queues.yaml").queues
    simulation = asyncio.run(simulate(flow, "voice", "+15550001401", SHIFT_ROUTING,
                                      queues=queues, now=datetime.fromisoformat(now)))
    [turn] = simulation.turns
    assert turn.fallback_reason is None
    assert simulation.route == queue
    if queue is None:
        assert_closed(ET.fromstring(turn.twiml))


def test_a_call_to_the_shift_line_goes_to_a_shift_team_or_hears_the_hours(twilio) -> None:
    """End to end, at whatever time the test runs: which answer is right when is pinned above."""
    response = Call(twilio, "+15550001401", SHIFT_ROUTING).response
    if twiml(response).find("Dial") is None:
        assert_closed(twiml(response))
    else:
        assert dialled(response) in (SIP["day_team"], SIP["night_team"])


def test_the_example_flows_are_not_served_on_other_numbers(twilio) -> None:
    # The reference flow stays the default: a call to another number is looked up by tier.
    assert dialled(Call(twilio, "+15550001501", "+15005550006").response) == SIP["standard"]
    # shift_routing is voice only: a message to its number goes to the default flow.
    replies = text(twilio, "+15550001502", SHIFT_ROUTING, "Hi")
    assert replies[0] == (None, "Thanks for your message! One of our team will reply shortly.")
