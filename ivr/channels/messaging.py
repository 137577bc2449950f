"""Messaging (SMS, WhatsApp): actions as `MessagingResponse` TwiML. A route forwards the
conversation to the queue's `message_to`; replies to the customer are plain messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_never

from twilio.twiml.messaging_response import Message, MessagingResponse

from ivr.flows.actions import Action, Ask, Hangup, RouteToQueue, Say
from ivr.queues import Queue

APOLOGY = "Sorry, we cannot answer messages right now. Please try again later."
# Twilio refuses a longer message body (error 21617), and then nothing at all is sent.
MAX_MESSAGE_LENGTH = 1600
MAX_MEDIA = 10  # pictures and files a message carries, at most
# Sent when a flow hands a conversation over without having said anything (e.g. its fallback).
ACKNOWLEDGEMENT = "Thanks for your message. One of our team will reply shortly."


def render_messaging(
    actions: list[Action], queues: Mapping[str, Queue], acknowledge: bool = True,
    inbound: Mapping[str, str] | None = None,
) -> str:
    """TwiML for `actions`; a hand-off the flow did not announce is acknowledged unless
    `acknowledge` is False (later messages of a conversation already handed over).
    `inbound` is the webhook's parameters: a forward carries the customer's pictures and files
    (MediaUrl0...), and a forward to a target on the other channel is sent from our number
    (`To`) on that channel."""
    inbound = inbound or {}
    media = media_urls(inbound)
    response = MessagingResponse()
    replied = not acknowledge
    for action in actions:
        match action:
            case Say() | Ask():  # a question is a message; the reply is the answer
                response.message(_fit(action.text if isinstance(action, Say) else action.prompt))
                replied = True
            case RouteToQueue():
                queue = queues.get(action.queue)
                if queue is None:
                    response.message(APOLOGY)
                    continue
                if not replied:  # a customer handed over is always told so
                    response.message(ACKNOWLEDGEMENT)
                if queue.message_to is not None and action.note:
                    sender = _sender(queue.message_to, inbound.get("To", ""))
                    if not media:
                        response.message(_fit(action.note), to=queue.message_to, from_=sender)
                        continue
                    forward = Message(to=queue.message_to, from_=sender)  # text and media nouns
                    forward.body(_fit(action.note))
                    for url in media:
                        forward.media(url)
                    response.append(forward)
            case Hangup():  # a conversation just ends: nothing to send
                pass
            case _:
                assert_never(action)
    return str(response)


def media_urls(params: Mapping[str, str]) -> list[str]:
    """The pictures and files of an inbound message (Twilio's URLs), in order."""
    count = params.get("NumMedia", "0")
    return [url for i in range(min(int(count) if count.isdigit() else 0, MAX_MEDIA))
            if (url := params.get(f"MediaUrl{i}", "")).startswith(("https://", "http://"))]


def _sender(target: str, our_address: str) -> str | None:
    """Where a forward to `target` comes from: None (Twilio's default, the number written to)
    when the target is on the conversation's own channel. Otherwise our number on the target's
    channel: Twilio does not send a WhatsApp conversation's forward to an SMS number from the
    WhatsApp sender, nor the other way round (the number must be enabled on both)."""
    ours = our_address.removeprefix("whatsapp:")
    wanted = f"whatsapp:{ours}" if target.startswith("whatsapp:") else ours
    return None if not ours or wanted == our_address else wanted


def _fit(text: str) -> str:
    """`text`, cut to the length Twilio sends: a flow's note and a long message from the
    customer together can pass it."""
    if len(text) <= MAX_MESSAGE_LENGTH:
        return text
    return text[:MAX_MESSAGE_LENGTH - 1] + "…"


def render_messaging_apology() -> str:
    return render_messaging([Say(APOLOGY)], {})
