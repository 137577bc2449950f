"""Running a flow offline, turn by turn, as the server would: the same engine, the same renderers,
the session state round-tripped through JSON as Redis keeps it; HTTP answered from mocks, and the
clock frozen if asked. Every turn records its steps, the variables it set, its actions and TwiML.

    simulation = await simulate(flow, "voice", "+15550000001", queues=queues,
                                mocks={"GET http://loyalty.test/customers/%2B15550000001":
                                       {"status": 200, "json": {"loyaltyStatus": "gold"}}})
    simulation.route  # "gold"

Mocks map "METHOD URL" (or just "URL", for GET) to `{status, json}`, `{status, body}`, or the
strings "timeout" / "refused". A request no mock answers is refused, like a server that is down,
and listed in `Simulation.unmocked` so that a forgotten mock never passes unnoticed.

The simulator never holds a secret's value: a secret that is set reads as a stand-in, which
requests show, and mocks name, as `[secret NAME]`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ivr.channels.inbound import answer_in
from ivr.channels.messaging import render_messaging
from ivr.channels.voice import CallbackUrls, keyed_answer, render_voice
from ivr.flows.actions import Action, Ask, Say
from ivr.flows.http import HttpConnectionError, HttpReply, HttpTimeout, check_headers
from ivr.flows.model import Flow
from ivr.flows.step import Channel, Contact
from ivr.queues import Queue
from ivr.session import Session
from ivr.settings import Settings, secret_variable
from ivr.turn import Surroundings, TakenTurn, take_turn

DEFAULT_TO_NUMBER = "+15005550006"  # Twilio's magic test number; `ivr call` uses it too
DEFAULT_DEADLINE: float = Settings.model_fields["decision_deadline"].default
TIMEOUT = "timeout"
REFUSED = "refused"
# Fixed SIDs keep simulated TwiML and JSON identical from one run to the next.
TEST_ACCOUNT_SID = "AC" + "0" * 32
_CALL_SID = "CA" + "0" * 32
_DTMF = re.compile(r"[0-9#*]+")
# How a mock names a secret in its URL.
_SECRET_IN_MOCK = re.compile(r"\[secret ([^\]]*)\]")


def secret_stand_in(name: str) -> str:
    """What a flow reads as `secrets.<name>` in a simulation: characters that URL-encoding and
    URL normalisation leave as they are, so it can be found in a request and shown."""
    return f"~secret~{name}~"


def _shown(text: str, secrets: Mapping[str, str]) -> str:
    """`text` with each secret's stand-in shown as `[secret NAME]`."""
    for name, stand_in in secrets.items():
        text = text.replace(stand_in, f"[secret {name}]")
    return text


class MockError(ValueError):
    """A mock is not one of the accepted forms; the message names its key."""


@dataclass(frozen=True)
class _Answer:
    status: int = 200
    content: bytes = b""
    failure: str | None = None  # TIMEOUT or REFUSED


class HttpMocks:
    """Canned answers for the flow's HTTP requests, and a log of every request made: an
    `HttpClient` that never touches the network."""

    def __init__(self, mocks: Mapping[str, Any], secrets: Mapping[str, str] | None = None
                 ) -> None:
        """`secrets`: name -> stand-in of each secret set, which a mock's URL names as
        `[secret NAME]`."""
        self._secrets = dict(secrets or {})
        self._answers = {_request_key(key, self._secrets): _answer(key, spec)
                         for key, spec in mocks.items()}
        self.log: list[dict[str, Any]] = []
        self.requested: set[tuple[str, str]] = set()

    def unused(self) -> list[str]:
        """The mocks no request asked for (a mistyped URL, or another base URL)."""
        return [_shown(f"{method} {url}", self._secrets) for method, url in self._answers
                if (method, url) not in self.requested]

    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   content: bytes | None, timeout: float, max_bytes: int) -> HttpReply:
        check_headers(headers)  # never a request, as on the server
        try:
            url = _normal_url(url)
        except httpx.InvalidURL as exc:
            raise HttpConnectionError(f"invalid URL: {exc}") from None
        entry: dict[str, Any] = {"method": method, "url": _shown(url, self._secrets)}
        self.log.append(entry)
        self.requested.add((method, url))
        answer = self._answers.get((method, url))
        if answer is None:
            entry["answer"] = "unmocked"
            raise HttpConnectionError("no mock for this request (simulated refusal)")
        if answer.failure == TIMEOUT:
            entry["answer"] = TIMEOUT
            raise HttpTimeout("simulated timeout")
        if answer.failure == REFUSED:
            entry["answer"] = REFUSED
            raise HttpConnectionError("simulated refused connection")
        entry["answer"] = answer.status
        ok = 200 <= answer.status < 300 and len(answer.content) <= max_bytes
        return HttpReply(answer.status, answer.content if ok else None)


def _normal_url(url: str) -> str:
    """One spelling of a URL, for a mock's key and a request's alike."""
    return str(httpx.URL(url))


def _request_key(key: str, secrets: Mapping[str, str]) -> tuple[str, str]:
    method, _, url = key.strip().partition(" ")
    if not url:
        method, url = "GET", method
    for name in _SECRET_IN_MOCK.findall(url):
        if name not in secrets:
            raise MockError(f"mock {key!r}: secrets.{name} is not set ({secret_variable(name)})")
    url = _SECRET_IN_MOCK.sub(lambda match: secrets[match[1]], url)
    try:
        return method.upper(), _normal_url(url.strip())
    except httpx.InvalidURL as exc:
        raise MockError(f"mock {key!r}: invalid URL: {exc}") from None


def _answer(key: str, spec: Any) -> _Answer:
    if spec in (TIMEOUT, REFUSED):
        return _Answer(failure=spec)
    if not isinstance(spec, Mapping) or set(spec) - {"status", "json", "body"} or (
            "json" in spec and "body" in spec):
        raise MockError(f'mock {key!r}: expected {{status, json}}, {{status, body}}, '
                        f'"{TIMEOUT}" or "{REFUSED}", got {spec!r}')
    status = spec.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise MockError(f"mock {key!r}: status must be an HTTP status code, got {status!r}")
    if "json" in spec:
        return _Answer(status, json.dumps(spec["json"]).encode())
    body = spec.get("body", "")
    if not isinstance(body, str):
        raise MockError(f"mock {key!r}: body must be text, got {body!r}")
    return _Answer(status, body.encode())


@dataclass
class Turn:
    """One webhook: the call starting or the first message, then one per answer."""

    number: int
    input: str | None  # the answer (or, on messaging's first turn, the message) it carried
    steps: list[str]  # after the first turn, starting with the waiting step it resumed
    vars: dict[str, Any]  # variables set or changed in this turn
    step_results: dict[str, Any]  # `steps.<id>` outcomes recorded in this turn
    saved: dict[str, str]  # contact fields saved in this turn
    actions: list[Action]
    twiml: str
    route: str | None
    waiting_at: str | None
    fallback_reason: str | None
    requests: list[dict[str, Any]]
    notes: list[str]  # what a user should notice: unmocked requests, missing queues

    def as_dict(self) -> dict[str, Any]:
        """Every field, in order; each action tagged with its kind."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["actions"] = [{"action": a.json_name, **dataclasses.asdict(a)}
                             for a in self.actions]
        return fields


@dataclass
class Simulation:
    """A flow's run over every turn, and where the contact ended up."""

    flow: str
    channel: Channel
    from_number: str
    to_number: str
    turns: list[Turn] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)  # every variable, after the last turn
    saved_fields: dict[str, str] = field(default_factory=dict)
    unused_inputs: list[str] = field(default_factory=list)  # left when the flow stopped waiting
    unused_mocks: list[str] = field(default_factory=list)  # mocks no request asked for

    @property
    def route(self) -> str | None:
        """The queue the contact was handed to, or None (still waiting, or ended)."""
        return self.turns[-1].route if self.turns else None

    @property
    def waiting_at(self) -> str | None:
        return self.turns[-1].waiting_at if self.turns else None

    @property
    def trace(self) -> list[str]:
        """Every step, across turns: a waiting step appears when it asks and again each time it
        resumes with an answer (every turn's steps, in order)."""
        return [step for turn in self.turns for step in turn.steps]

    @property
    def says(self) -> list[str]:
        """What the flow said and asked, in order (renderer additions such as the messaging
        acknowledgement are not the flow's words and are left out)."""
        return [a.text if isinstance(a, Say) else a.prompt
                for turn in self.turns for a in turn.actions if isinstance(a, Say | Ask)]

    @property
    def unmocked(self) -> list[str]:
        return [f"{r['method']} {r['url']}" for turn in self.turns for r in turn.requests
                if r["answer"] == "unmocked"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "channel": self.channel,
            "from": self.from_number,
            "to": self.to_number,
            "route": self.route,
            "waiting_at": self.waiting_at,
            "trace": self.trace,
            "says": self.says,
            "vars": self.vars,
            "saved_fields": self.saved_fields,
            "unmocked": self.unmocked,
            "unused_inputs": self.unused_inputs,
            "unused_mocks": self.unused_mocks,
            "turns": [turn.as_dict() for turn in self.turns],
        }

    def to_json(self, indent: int | None = 2) -> str:
        # Sessions hold JSON only, so everything here is JSON; default=str is a guard, not a rule.
        return json.dumps(self.as_dict(), indent=indent, default=str)


async def simulate(
    flow: Flow,
    channel: Channel,
    from_number: str,
    to_number: str = DEFAULT_TO_NUMBER,
    *,
    queues: Mapping[str, Queue],
    body: str | None = None,
    inputs: Sequence[str] = (),
    mocks: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    memory: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
    secrets: Collection[str] = (),
    deadline: float = DEFAULT_DEADLINE,
) -> Simulation:
    """Run `flow` for a contact `from_number` calling or writing to `to_number`: start it, then
    resume it with each of `inputs` while it waits.

    `body` is messaging's first message; `memory` is what contact memory holds (first_seen,
    saved fields); `settings` is what flows read as `settings.*`; `secrets` names the secrets
    set (each reads as its stand-in, see secret_stand_in); `now` freezes the clock
    (timezone-aware); `deadline` is the seconds each turn may take, as IVR_DECISION_DEADLINE.
    Raises MockError for a malformed mock and ValueError for a naive `now`.
    """
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware, e.g. 2026-11-23T10:00:00+00:00")
    flow_secrets = {name: secret_stand_in(name) for name in secrets}
    http_mocks = HttpMocks(mocks or {}, flow_secrets)
    contact = Contact(from_number.removeprefix("whatsapp:"), from_number, channel)
    surroundings = Surroundings(
        dict(settings or {}), flow_secrets, http_mocks, deadline,
        clock=(lambda: now) if now is not None else (lambda: datetime.now(UTC)))
    simulation = Simulation(flow.name, channel, from_number, to_number)
    pending = list(inputs)
    session = Session(flow.name, dict(memory or {}))
    while not simulation.turns or (session.waiting_at is not None and pending):
        if simulation.turns:
            text: str | None = pending.pop(0)
        else:  # a call starts with no text; a conversation with its first message
            text = body if channel == "messaging" else None
        number = session.turn + 1
        asked = next((a for a in simulation.turns[-1].actions if isinstance(a, Ask)),
                     None) if simulation.turns else None
        params = _webhook_params(channel, from_number, to_number, text, number, asked)
        state = copy.deepcopy(session.state)
        requests_before = len(http_mocks.log)
        # The contact's answer, read from the webhook as the server reads it.
        answer = answer_in(channel, params) if session.waiting_at is not None else None
        taken = await take_turn(flow, session, contact, params, surroundings, queues.get,
                                answer=answer, resumed=bool(simulation.turns))
        simulation.turns.append(_record_turn(
            flow, taken, given=text, vars_before=state.get("vars", {}),
            steps_before=state.get("steps", {}), requests=http_mocks.log[requests_before:]))
        simulation.saved_fields.update(taken.run.saved_fields)
        simulation.vars = taken.run.vars
        # What a session keeps goes through JSON in Redis; so it does here.
        session = Session.from_json(taken.session.to_json())
    simulation.unused_inputs = pending
    simulation.unused_mocks = http_mocks.unused()
    return simulation


def _webhook_params(channel: Channel, from_number: str, to_number: str, text: str | None,
                    number: int, asked: Ask | None = None) -> dict[str, str]:
    """The parameters Twilio would post for this turn, the answer to `asked` (the question of
    the turn before) included."""
    if from_number.startswith("whatsapp:") and not to_number.startswith("whatsapp:"):
        to_number = f"whatsapp:{to_number}"  # WhatsApp webhooks carry both ends prefixed
    params = {"AccountSid": TEST_ACCOUNT_SID, "From": from_number, "To": to_number}
    if channel == "messaging":
        return {**params, "MessageSid": f"SM{number:032d}", "Body": text or "", "NumMedia": "0"}
    params.update(CallSid=_CALL_SID, CallStatus="ringing" if number == 1 else "in-progress",
                  Direction="inbound")
    if number > 1 and text:
        # Keys pressed come as Digits (as far as the <Gather> reads them), words spoken as
        # SpeechResult.
        if _DTMF.fullmatch(text):
            params["Digits"] = keyed_answer(text, num_digits=asked.max_digits if asked else None)[0]
        else:
            params["SpeechResult"] = text
    return params


def _record_turn(flow: Flow, taken: TakenTurn, *, given: str | None,
                 vars_before: dict[str, Any], steps_before: dict[str, Any],
                 requests: list[dict[str, Any]]) -> Turn:
    run, outcome, route = taken.run, taken.outcome, taken.routed
    notes = [f"unmocked request {r['method']} {r['url']}: answered as a refused connection"
             for r in requests if r["answer"] == "unmocked"]
    if route is not None and route not in taken.queues:
        notes.append(f"queue {route!r} and the fallback queue {flow.fallback_queue!r} are not "
                     "configured: the contact gets an apology")
    if outcome.fallback_reason is not None:
        notes.append(f"fallback queue {flow.fallback_queue!r} used: {outcome.fallback_reason}")
    if run.contact.channel == "voice":
        twiml = render_voice(taken.actions, taken.queues, CallbackUrls(""), taken.session.turn)
    else:
        twiml = render_messaging(taken.actions, taken.queues, inbound=run.params)
    return Turn(
        number=taken.session.turn,
        input=given,
        steps=list(outcome.trace),
        vars={k: v for k, v in run.vars.items() if k not in vars_before or vars_before[k] != v},
        step_results={k: v for k, v in run.steps.items() if steps_before.get(k) != v},
        saved=dict(run.saved_fields),
        actions=taken.actions,
        twiml=twiml,
        route=route,
        waiting_at=outcome.waiting_at,
        fallback_reason=outcome.fallback_reason,
        requests=[dict(r) for r in requests],
        notes=notes,
    )
