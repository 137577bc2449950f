"""What the README's *Twilio's Fallback URL* says, as far as it can be checked without Twilio: a
second instance routes the fallback request, and the TwiML Bin shown is valid TwiML dialling
the standard queue."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable

from twilio.twiml.voice_response import VoiceResponse

from ivr.queues import load_queue_file
from ivr.settings import Settings
from tests import loyalty_api as L
from tests.conftest import ROOT
from tests.servers import ServerThread
from tests.twilio_client import FakeTwilio, call_params, message_params

SECOND_INSTANCE = "https://ivr-b.example.com"
# What Twilio adds to a fallback request: why the primary URL failed, and which it was.
FAILED_PRIMARY = {"ErrorCode": "11200", "ErrorUrl": "https://ivr.example.com/twilio/voice"}


def test_a_second_instance_routes_twilios_fallback_request_signed_for_its_own_url(
    make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread],
) -> None:
    server = start_server(make_settings(public_url=SECOND_INSTANCE))
    twilio = FakeTwilio(server.url, public_url=SECOND_INSTANCE)
    voice = twilio.post("/twilio/voice", call_params(L.GOLD, **FAILED_PRIMARY))
    assert voice.status_code == 200
    assert "<Sip>sip:gold@queues.example.com</Sip>" in voice.text
    messaging = twilio.post("/twilio/messaging", message_params(L.PLATINUM, **{
        **FAILED_PRIMARY, "ErrorUrl": "https://ivr.example.com/twilio/messaging"}))
    assert messaging.status_code == 200 and "platinum member" in messaging.text


def test_the_readmes_twiml_bin_dials_the_shipped_standard_queue() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Twilio's Fallback URL.**"):]
    shown = re.search(r"```xml\n(.*?)```", section, re.S)
    assert shown is not None, "the Fallback URL section has no TwiML Bin"
    standard = load_queue_file(ROOT / "sip_config" / "queues.yaml").queues["standard"]
    built = VoiceResponse()
    built.dial().sip(standard.sip_uri)
    assert ET.canonicalize(shown.group(1).strip()) == ET.canonicalize(built.to_xml())
