"""Messaging (SMS, WhatsApp): actions as `MessagingResponse` TwiML. A route forwards the
conversation to the queue's `message_to`; replies to the customer are plain messages."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.messaging_response import MessagingResponse

from ivr.flows.actions import Action, Ask, RouteToQueue, Say
from ivr.queues import Queue

APOLOGY = "Sorry, we cannot answer messages right now. Please try again later."
# Sent when a flow hands a conversation over without having said anything (e.g. its fallback).
ACKNOWLEDGEMENT = "Thanks for your message. One of our team will reply shortly."


def render_messaging(
    actions: list[Action], queues: Mapping[str, Queue], acknowledge: bool = True
) -> str:
    """TwiML for `actions`; a hand-off the flow did not announce is acknowledged unless
    `acknowledge` is False (later messages of a conversation already handed over)."""
    response = MessagingResponse()
    replied = not acknowledge
    for action in actions:
        if isinstance(action, Say | Ask):  # a question is a message; the reply is the answer
            response.message(action.text if isinstance(action, Say) else action.prompt)
            replied = True
        elif isinstance(action, RouteToQueue):
            queue = queues.get(action.queue)
            if queue is None:
                response.message(APOLOGY)
                continue
            if not replied:  # a customer handed over is always told so
                response.message(ACKNOWLEDGEMENT)
            if queue.message_to is not None and action.note:
                response.message(action.note, to=queue.message_to)
        # Hangup: a conversation just ends; nothing to send.
    return str(response)


def render_messaging_apology() -> str:
    return render_messaging([Say(APOLOGY)], {})
