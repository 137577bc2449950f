"""Per-call traces: what answering each webhook did (the steps taken, each fetch's outcome and
latency, the route, why a fallback was used, how long it took), recorded along the data path,
and how a trace shows what the contact answered. ivr.redis.call_traces keeps them in Redis for a
bounded time and number, for `ivr calls tail`, `GET /admin/api/calls` and the admin page's Calls.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ivr.flows.model import Flow
from ivr.flows.runner import Outcome
from ivr.flows.step import Run, Step
from ivr.logs import mask_number
from ivr.timestamps import utc_iso

MAX_SID_LENGTH = 64  # Twilio's are 34 characters
MAX_ANSWER_LENGTH = 40  # of an answer as a trace shows it; longer ones end in "…"
# An account, card or phone number (five digits or more, however spaced, dashed or bracketed),
# or an email, inside a menu choice's answer
_PERSONAL = re.compile(r"\+?\(?\d(?:[\s().-]*\d){4,}|\S+@\S+")


@dataclass
class CallTrace:
    """What answering one webhook did, filled in along the data path."""

    endpoint: str  # voice, voice_dial, messaging
    channel: str
    sid: str
    caller: str  # masked
    at: float = field(default_factory=time.time)
    flow: str | None = None
    steps: list[str] = field(default_factory=list)
    fetches: dict[str, dict[str, Any]] = field(default_factory=dict)
    route: str | None = None
    waiting_at: str | None = None  # the question the contact was asked, waiting for the answer
    answer: dict[str, Any] | None = None  # the answer this webhook brought (see shown_answer)
    fallback_reason: str | None = None
    decided: bool = False  # a flow (or its fallback) chose `route` for this webhook
    summary: str = ""
    duration_ms: float = 0.0

    def ran(self, flow: Flow, outcome: Outcome, run: Run, route: str | None,
            answered_at: str | None = None, answer: str | None = None) -> None:
        """Record a run of `flow`: its steps, its fetches' outcomes, the route it chose or the
        question it waits at, and the `answer` it was resumed with at `answered_at`."""
        self.flow = flow.name
        self.steps = list(outcome.trace)
        # Only fetch outcomes: other steps' records may hold what the contact typed.
        self.fetches = {step: dict(run.steps[step]) for step in outcome.trace
                        if step in run.steps and flow.steps[step].records_traced}
        self.route = route
        self.waiting_at = outcome.waiting_at
        if answered_at is not None:
            valid = run.steps.get(answered_at, {}).get("valid")
            self.answer = shown_answer(answered_at, flow.steps.get(answered_at), answer,
                                       valid, self.channel)
        self.fallback_reason = outcome.fallback_reason
        self.decided = route is not None

    def handed_over(self, flow_name: str | None, route: str) -> None:
        """A message forwarded to the queue its conversation was handed to earlier."""
        self.flow = flow_name
        self.route = route

    def fell_back(self, flow: Flow, reason: str) -> None:
        self.flow = flow.name
        self.route = flow.fallback_queue
        self.fallback_reason = reason
        self.decided = True

    def finish(self, summary: str, seconds: float) -> None:
        self.summary = summary
        self.duration_ms = round(seconds * 1000, 1)

    def sid_field(self) -> dict[str, str]:
        """The SID under the name log lines carry it: call_sid or message_sid."""
        return {"call_sid" if self.channel == "voice" else "message_sid": self.sid}

    def log_fields(self) -> dict[str, Any]:
        """The structured fields of the webhook's log line (JSON logs)."""
        return {"endpoint": self.endpoint, "from": self.caller, "flow": self.flow,
                "route": self.route, "fallback_reason": self.fallback_reason,
                "duration_ms": self.duration_ms}

    def entry(self, entry_id: str, instance: str) -> dict[str, Any]:
        return {
            "id": entry_id,
            "instance": instance,
            "at": utc_iso(self.at, milliseconds=True),
            "channel": self.channel,
            "endpoint": self.endpoint,
            "sid": self.sid,
            "from": self.caller,
            "flow": self.flow,
            "steps": self.steps,
            "fetches": self.fetches,
            "route": self.route,
            "waiting_at": self.waiting_at,
            "answer": self.answer,
            "fallback_reason": self.fallback_reason,
            "summary": self.summary,
            "duration_ms": self.duration_ms,
        }


def shown_answer(step_id: str, step: Step | None, answer: str | None, valid: bool | None,
                 channel: str) -> dict[str, Any]:
    """An answer as a trace keeps it, for the people who read traces, in at most
    MAX_ANSWER_LENGTH characters. An answer to a choice (keys pressed, words said or sent) is
    kept as given, with the option it chose: it says why the contact went where they did (a
    number of five or more digits, or an email, in it is masked). Any other answer (an email,
    an account number, a name) is personal data: masked like a phone number, its first
    character and last three kept."""
    given = (answer or "").strip()
    shown: dict[str, Any] = {"step": step_id, "given": None, "valid": bool(valid)}
    if not given:
        return shown
    if step is not None and step.answers_are_choices():
        given = _PERSONAL.sub(_masked_personal, given)  # before the cut, which could split one
        if len(given) > MAX_ANSWER_LENGTH:
            given = given[:MAX_ANSWER_LENGTH - 1] + "…"
        shown["given"] = given
        if valid:
            shown["choice"] = step.interpret(answer or "", channel)
    else:
        shown["given"] = _masked(given)
        shown["masked"] = True
    return shown


def _masked_personal(found: re.Match[str]) -> str:
    text = found.group()
    return _masked(text) if "@" in text else mask_number(text)


def _masked(text: str) -> str:
    """`jane@example.com` -> `j************com`; four characters or fewer, all masked; a
    longer text in at most MAX_ANSWER_LENGTH characters."""
    if len(text) <= 4:
        return "*" * len(text)
    return text[0] + "*" * min(len(text) - 4, MAX_ANSWER_LENGTH - 4) + text[-3:]


def describe_answer(answer: dict[str, Any]) -> str:
    """An answer of a trace in words: `menu: "2" (support)`, `menu: "7" (not valid)`,
    `ask_email: "j************com" (masked, valid)`, `menu: no answer`."""
    if answer.get("given") is None:
        return f"{answer['step']}: no answer"
    notes = ["masked"] if answer.get("masked") else []
    if answer.get("choice") is not None:
        notes.append(str(answer["choice"]))
    else:
        notes.append("valid" if answer.get("valid") else "not valid")
    given = json.dumps(answer["given"], ensure_ascii=False)
    return f"{answer['step']}: {given} ({', '.join(notes)})"


def is_sid(value: str) -> bool:
    """Whether `value` can be a CallSid or MessageSid (what `CallTraces.recent`, in
    ivr.redis.call_traces, finds traces by): letters and digits, at most MAX_SID_LENGTH of them."""
    return 0 < len(value) <= MAX_SID_LENGTH and value.isalnum()
