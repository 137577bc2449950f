"""Channel adapters: actions rendered as TwiML by twilio's builders, escaped, never empty-handed."""

from __future__ import annotations

import dataclasses
import inspect
import xml.etree.ElementTree as ET
from typing import Any, get_args

import pytest

from ivr.channels.messaging import ACKNOWLEDGEMENT, render_messaging
from ivr.channels.voice import APOLOGY, CallbackUrls, render_voice, render_voice_apology
from ivr.flows import actions
from ivr.flows.actions import Action, Ask, Hangup, RouteToQueue, Say
from ivr.queues import Queue

GOLD = Queue(sip_uri="sip:gold@queues.example.com", message_to="whatsapp:+15550100101")
HEAD = '<?xml version="1.0" encoding="UTF-8"?>'
URLS = CallbackUrls("https://ivr.example.com")


def test_voice_says_then_dials_the_queues_sip_uri() -> None:
    twiml = render_voice([Say("Hello <caller> & co"), RouteToQueue("gold", "n")], {"gold": GOLD},
                         URLS)
    assert twiml == (
        f"{HEAD}<Response><Say>Hello &lt;caller&gt; &amp; co</Say>"
        '<Dial action="https://ivr.example.com/twilio/voice/dial?queue=gold&amp;try=0">'
        "<Sip>sip:gold@queues.example.com</Sip></Dial></Response>")


def test_voice_asks_with_a_gather_that_comes_back_with_its_turn() -> None:
    twiml = render_voice([Ask("Press 1 for sales", max_digits=1)], {}, URLS, turn=3)
    assert twiml == (
        f'{HEAD}<Response><Gather action="https://ivr.example.com/twilio/voice?turn=3" '
        'actionOnEmptyResult="true" input="dtmf speech" method="POST" numDigits="1" '
        'speechTimeout="auto" timeout="5"><Say>Press 1 for sales</Say></Gather></Response>')


def test_a_question_whose_prompt_renders_empty_has_no_empty_say() -> None:
    root = ET.fromstring(render_voice([Ask("")], {}, CallbackUrls(""), 1))
    gather = root.find("Gather")
    assert gather is not None and gather.find("Say") is None


def test_callback_urls_are_relative_without_a_public_url() -> None:
    assert CallbackUrls("").dial("gold", 2) == "/twilio/voice/dial?queue=gold&try=2"


def test_voice_route_to_an_unconfigured_queue_apologises_and_hangs_up() -> None:
    assert render_voice([RouteToQueue("gone", "n")], {}, URLS) == render_voice_apology()
    assert APOLOGY in render_voice_apology() and "<Hangup />" in render_voice_apology()


def test_voice_end_hangs_up() -> None:
    assert render_voice([Hangup()], {}, URLS) == f"{HEAD}<Response><Hangup /></Response>"


def test_messaging_forwards_to_the_queue_and_never_dials() -> None:
    twiml = render_messaging([Say("Thanks"), RouteToQueue("gold", "+1555 (gold): hi")],
                             {"gold": GOLD})
    assert twiml == (f"{HEAD}<Response><Message>Thanks</Message>"
                     '<Message to="whatsapp:+15550100101">+1555 (gold): hi</Message></Response>')


def test_a_message_longer_than_twilio_sends_is_cut_to_fit() -> None:
    """Twilio refuses a body over 1,600 characters, and then sends nothing: a customer's long
    message behind the flow's note made the forward too long (a walk-through found it)."""
    long = "x" * 1600
    root = ET.fromstring(render_messaging(
        [Say("y" * 2000), RouteToQueue("gold", f"+1555 (gold): {long}")], {"gold": GOLD}))
    said, forwarded = root.findall("Message")
    assert len(said.text) == len(forwarded.text) == 1600
    assert forwarded.text.startswith("+1555 (gold): xxx") and forwarded.text.endswith("x…")


def test_a_forward_to_the_other_channel_is_sent_from_our_number_on_that_channel() -> None:
    """A WhatsApp conversation forwarded to an SMS number (and the other way round) left the
    WhatsApp sender (or the SMS number), which Twilio refuses: the forward was lost (an
    operator walk-through). It now names our number on the target's channel."""
    sms_agent = Queue(sip_uri="sip:gold@queues.example.com", message_to="+15550100101")
    forward = [RouteToQueue("gold", "note")]

    def sender(queue: Queue, our_address: str) -> str | None:
        root = ET.fromstring(render_messaging(forward, {"gold": queue},
                                              inbound={"To": our_address}))
        return root.findall("Message")[-1].get("from")

    assert sender(sms_agent, "whatsapp:+15005550006") == "+15005550006"
    assert sender(GOLD, "+15005550006") == "whatsapp:+15005550006"
    # The same channel: Twilio's default sender, the number written to.
    assert sender(sms_agent, "+15005550006") is None
    assert sender(GOLD, "whatsapp:+15005550006") is None


def test_a_forward_carries_the_customers_pictures() -> None:
    """A picture sent with (or without) text reached the agent as an empty line (an operator
    walk-through): the forward now carries the message's media."""
    inbound = {"To": "+15005550006", "NumMedia": "2", "Body": "",
               "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
               "MediaUrl1": "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2"}
    root = ET.fromstring(render_messaging([Say("Thanks"), RouteToQueue("gold", "+1555 (gold): ")],
                                          {"gold": GOLD}, inbound=inbound))
    forward = root.findall("Message")[-1]
    assert forward.get("to") == GOLD.message_to
    assert forward.findtext("Body") == "+1555 (gold): "
    assert [m.text for m in forward.findall("Media")] == [inbound["MediaUrl0"],
                                                          inbound["MediaUrl1"]]


def test_messaging_hand_off_without_a_reply_still_acknowledges_the_customer() -> None:
    twiml = render_messaging([RouteToQueue("gold", "note")], {"gold": GOLD})
    assert f"<Message>{ACKNOWLEDGEMENT}</Message>" in twiml


def test_messaging_asks_with_a_plain_message() -> None:
    assert render_messaging([Ask("Reply SALES or SUPPORT")], {}) == (
        f"{HEAD}<Response><Message>Reply SALES or SUPPORT</Message></Response>")


def test_a_sticky_forward_is_not_acknowledged_again() -> None:
    twiml = render_messaging([RouteToQueue("gold", "more")], {"gold": GOLD}, acknowledge=False)
    assert twiml == (f'{HEAD}<Response><Message to="whatsapp:+15550100101">more</Message>'
                     "</Response>")


def test_voice_speaks_and_listens_in_the_steps_language() -> None:
    twiml = render_voice([Say("Hola", "es-ES"), Ask("Oprima 1", language="es-ES")], {}, URLS, 1)
    root = ET.fromstring(twiml)
    assert root.find("Say").get("language") == "es-ES"
    assert root.find("Gather").get("language") == "es-ES"
    assert root.find("Gather/Say").get("language") == "es-ES"
    assert render_messaging([Say("Hola", "es-ES")], {}).count("language") == 0


def test_an_answer_built_once_serves_every_caller_routed_alike_and_follows_queue_changes() -> None:
    first = render_voice([RouteToQueue("gold", "+15550001 (gold)")], {"gold": GOLD}, URLS)
    second = render_voice([RouteToQueue("gold", "+15550002 (gold)")], {"gold": GOLD}, URLS)
    assert second is first  # the same answer, built once: the note is for messaging only
    moved = GOLD.model_copy(update={"sip_uri": "sip:gold@moved.example.com"})
    after = render_voice([RouteToQueue("gold", "n")], {"gold": moved}, URLS)
    assert "<Sip>sip:gold@moved.example.com</Sip>" in after and after != first
    assert render_voice([RouteToQueue("gold", "n")], {}, URLS) == render_voice_apology()


def _every_action() -> list[Action]:
    """One of each action class ivr/flows/actions.py defines, its required fields filled."""
    classes = [cls for _, cls in inspect.getmembers(actions, inspect.isclass)
               if dataclasses.is_dataclass(cls) and cls.__module__ == actions.__name__]
    assert set(classes) == set(get_args(Action)), "every action class belongs to Action"
    return [cls(**{field.name: "gold" for field in dataclasses.fields(cls)
                   if field.default is dataclasses.MISSING})
            for cls in classes]


@dataclasses.dataclass(frozen=True)
class _Unknown:
    """An action no renderer knows, as a new one would be before its renderers learn it."""


def test_every_action_renders_on_both_channels_and_an_unknown_one_is_refused() -> None:
    every = _every_action()
    assert len({action.json_name for action in every}) == len(every)  # ivr simulate --json
    for action in every:
        assert render_voice([action], {"gold": GOLD}, URLS).startswith(HEAD)
        assert render_messaging([action], {"gold": GOLD}).startswith(HEAD)
    unknown: Any = _Unknown()
    with pytest.raises(AssertionError):
        render_voice([unknown], {}, URLS)
    with pytest.raises(AssertionError):
        render_messaging([unknown], {})
