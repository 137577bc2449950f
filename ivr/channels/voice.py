"""Voice: actions as `VoiceResponse` TwiML. A route dials the queue's SIP URI."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import VoiceResponse

from ivr.flows.actions import Action, Hangup, RouteToQueue, Say
from ivr.queues import Queue

APOLOGY = "We're sorry, we cannot take your call right now. Please try again later."


def render_voice(actions: list[Action], queues: Mapping[str, Queue]) -> str:
    """TwiML for `actions`; `queues` holds the live configuration of every queue routed to."""
    response = VoiceResponse()
    for action in actions:
        if isinstance(action, Say):
            response.say(action.text)
        elif isinstance(action, RouteToQueue):
            queue = queues.get(action.queue)
            if queue is None:
                response.say(APOLOGY)
                response.hangup()
            else:
                response.dial().sip(queue.sip_uri)
        elif isinstance(action, Hangup):
            response.hangup()
    return str(response)


def render_voice_apology() -> str:
    """For a call no flow serves: never silence, never Twilio's application error."""
    return render_voice([Say(APOLOGY), Hangup()], {})
