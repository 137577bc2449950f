"""Voice: actions as `VoiceResponse` TwiML. A question is a <Gather> whose answer comes back to
/twilio/voice; a route dials the queue's SIP URI, and the dial's result comes back to
/twilio/voice/dial, where failover happens."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never
from urllib.parse import urlencode

from twilio.twiml.voice_response import VoiceResponse

from ivr.flows.actions import Action, Ask, Hangup, RouteToQueue, Say
from ivr.queues import Queue

APOLOGY = "We're sorry, we cannot take your call right now. Please try again later."
# <Gather>'s finishOnKey when the TwiML sets none, as ours never does.
DEFAULT_FINISH_ON_KEY = "#"


@dataclass(frozen=True)
class CallbackUrls:
    """The URLs the server writes into its TwiML for Twilio to call back."""

    base: str  # IVR_PUBLIC_URL, or "" for URLs relative to the one Twilio requested

    def gather(self, turn: int) -> str:
        return f"{self.base}/twilio/voice?turn={turn}"

    def held(self) -> str:
        return f"{self.base}/twilio/voice?held=1"

    def dial(self, queue: str, attempt: int, last_resort: bool = False) -> str:
        query = {"queue": queue, "try": attempt, **({"last": 1} if last_resort else {})}
        return f"{self.base}/twilio/voice/dial?{urlencode(query)}"


def render_voice(
    actions: list[Action], queues: Mapping[str, Queue], urls: CallbackUrls, turn: int = 0,
    last_resort: bool = False,
) -> str:
    """TwiML for `actions`; `queues` holds the live configuration of every queue routed to,
    `turn` numbers a question so that a retried answer is recognised, and `last_resort` marks
    a dial after which nothing else is tried."""
    # A call's route carries no note (that is for messaging hand-offs): without it, the same
    # answer serves every caller routed the same way.
    spoken = tuple(RouteToQueue(action.queue, "") if isinstance(action, RouteToQueue) else action
                   for action in actions)
    routed = tuple((action.queue, queues.get(action.queue)) for action in spoken
                   if isinstance(action, RouteToQueue))
    return _render_voice(spoken, routed, urls, turn, last_resort)


# twilio's builders are a large share of a webhook (bench/README.md, ivr/channels/voice.py), and
# most answers are the same few dials: built once. A queue's new SIP URI is a new key, so never a
# stale answer.
@functools.lru_cache(maxsize=4096)
def _render_voice(actions: tuple[Action, ...], routed: tuple[tuple[str, Queue | None], ...],
                  urls: CallbackUrls, turn: int, last_resort: bool) -> str:
    queues = dict(routed)
    response = VoiceResponse()
    for action in actions:
        match action:
            case Say():
                response.say(action.text, language=action.language)
            case Ask():
                inputs = " ".join(name for name, on in (("dtmf", action.dtmf),
                                                        ("speech", action.speech)) if on)
                gather = response.gather(
                    input=inputs, action=urls.gather(turn), method="POST",
                    action_on_empty_result=True, timeout=action.timeout, speech_timeout="auto",
                    num_digits=action.max_digits, language=action.language)
                if action.prompt:  # a prompt that renders empty: no empty <Say> (Twilio's 13520)
                    gather.say(action.prompt, language=action.language)
            case RouteToQueue():
                queue = queues.get(action.queue)
                if queue is None:
                    response.say(APOLOGY)
                    response.hangup()
                else:
                    response.dial(action=urls.dial(action.queue, 0, last_resort)
                                  ).sip(queue.sip_uri)
            case Hangup():
                response.hangup()
            case _:
                assert_never(action)
    return str(response)


@functools.lru_cache(maxsize=1024)
def render_hold(prompt: str, redirect_url: str) -> str:
    """A caller waiting for a slow decision hears something, then comes back for it."""
    response = VoiceResponse()
    response.say(prompt)
    response.redirect(redirect_url, method="POST")
    return str(response)


@functools.lru_cache(maxsize=1024)
def render_dial(sip_uri: str, action_url: str) -> str:
    response = VoiceResponse()
    response.dial(action=action_url).sip(sip_uri)
    return str(response)


@functools.cache
def render_hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


@functools.cache
def render_voice_apology() -> str:
    """For a call no flow serves: never silence, never Twilio's application error."""
    response = VoiceResponse()
    response.say(APOLOGY)
    response.hangup()
    return str(response)


def keyed_answer(keys: str, finish_on_key: str = DEFAULT_FINISH_ON_KEY,
                 num_digits: int | None = None) -> tuple[str, str]:
    """What Twilio posts as `Digits` when a caller presses `keys` at a <Gather>, and the keys
    after it stopped reading: it stops at the finish key, which it leaves out (pressed first,
    Digits is empty), or once it has `num_digits` keys. With no finish key ("") none finishes."""
    for pressed, key in enumerate(keys):
        if key == finish_on_key:
            return keys[:pressed], keys[pressed + 1:]
        if num_digits is not None and pressed + 1 >= num_digits:
            return keys[:pressed + 1], keys[pressed + 1:]
    return keys, ""
