"""Per-call traces: what answering each webhook did (the steps taken, each fetch's outcome and
latency, the route, why a fallback was used, how long it took), kept in Redis for a bounded time
and number, for `ivr calls tail`, `GET /admin/api/calls` and the admin page's Calls.

Writing a trace never slows or breaks a call: `CallTraces.record` only queues the entry in memory;
one task per process writes what has queued up, at most every WRITE_INTERVAL, in one pipelined
round trip, and drops it (counted in ivr_call_traces_dropped_total) when Redis is unreachable.
The writes go through an auto-pipeline of their own (hiredis packs them, in C, on a connection
the calls' state does not wait behind): through redis-py, packing hundreds of entries a write
in Python cost 5% of a cache-hit call's CPU.

Key:
  ivr:calls   sorted set: JSON entry scored by the time it was answered (epoch seconds); entries
              older than IVR_TRACE_HOURS, and beyond the newest IVR_TRACE_MAX_ENTRIES, are removed
              at each write
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from ivr.flows.model import Flow
from ivr.flows.runner import Outcome
from ivr.flows.step import Run, Step
from ivr.jsonfast import compact_json
from ivr.logs import mask_number
from ivr.metrics import CALL_TRACES_DROPPED
from ivr.redis.autopipeline import AutoPipeline
from ivr.timestamps import utc_iso

log = logging.getLogger("ivr.calltrace")

CALLS_KEY = "ivr:calls"
MAX_PENDING = 2000  # entries waiting for Redis, per process; beyond, the oldest are dropped
# Traces wait this long to be written together: under load, one round trip carries hundreds.
WRITE_INTERVAL = 0.1
WRITE_TIMEOUT = 2.0
RETRY_PAUSE = 1.0  # after a failed write, so an outage does not spin
READ_CHUNK = 500
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
    """Whether `value` can be a CallSid or MessageSid (what `CallTraces.recent` finds traces
    by): letters and digits, at most MAX_SID_LENGTH of them."""
    return 0 < len(value) <= MAX_SID_LENGTH and value.isalnum()


class CallTraces:
    """This process's writer of call traces, and the reader of everyone's."""

    def __init__(self, client: redis.Redis, redis_url: str, max_entries: int, hours: float
                 ) -> None:
        self.redis = client  # reads
        self._writes = AutoPipeline(redis_url, timeout=WRITE_TIMEOUT)
        self.max_entries = max_entries
        self.ttl = max(1, round(hours * 3600))
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()
        # Entry ids: this process's random prefix and a count (a random id for each entry was a
        # system call on every call).
        self._id_prefix = secrets.token_hex(4)
        # Which process answered, among several instances and workers: host and process id.
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def start(self) -> None:
        if self.enabled:
            self._writer = asyncio.create_task(self._write_loop(), name="ivr-call-traces")

    async def close(self) -> None:
        """Stop writing, after one last try at what is still queued (a write cut short
        included)."""
        if self._writer is None:
            return
        self._closing = True
        self._writer.cancel()
        # Should the cancellation be lost (redis-py, which made the writes before, swallowed
        # some), the writer, back in its loop, sees `_closing` and returns.
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        if self._pending:
            await self._write_pending()
        await self._writes.close()

    def record(self, trace: CallTrace) -> None:
        """Queue `trace` for writing; never waits, never raises into the call."""
        if not self.enabled:
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            CALL_TRACES_DROPPED.inc()
        answered = trace.at + trace.duration_ms / 1000
        entry_id = f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFF:08x}"
        self._pending.append((answered, compact_json(trace.entry(entry_id, self.instance))))
        if not self._wake.is_set():
            self._wake.set()

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            await asyncio.sleep(WRITE_INTERVAL)
            self._wake.clear()
            if not await self._write_pending() and not self._closing:
                await asyncio.sleep(RETRY_PAUSE)

    async def _write_pending(self) -> bool:
        queued = list(self._pending)
        self._pending.clear()
        if not queued:
            return True
        now = time.time()
        try:
            # At most WRITE_TIMEOUT: the auto-pipeline's bound.
            await self._writes.execute(
                ("ZADD", CALLS_KEY, *itertools.chain.from_iterable(queued)),
                ("ZREMRANGEBYSCORE", CALLS_KEY, "-inf", f"({now - self.ttl}"),
                ("ZREMRANGEBYRANK", CALLS_KEY, 0, -self.max_entries - 1),
                ("EXPIRE", CALLS_KEY, self.ttl))
        except asyncio.CancelledError:  # closing: close()'s last try writes them (ZADD again
            self._pending.extendleft(reversed(queued))  # is harmless if they got there)
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            CALL_TRACES_DROPPED.inc(len(queued))
            if not self._failing:
                log.warning("call traces not stored: store unavailable (%s); retrying",
                            type(exc).__name__)
            self._failing = True
            return False
        except Exception:  # a trace must never take the writer down with it
            CALL_TRACES_DROPPED.inc(len(queued))
            log.exception("call traces not stored")
            return True
        if self._failing:
            log.info("call traces stored again")
            self._failing = False
        return True

    async def recent(self, limit: int, sid: str | None = None,
                     after: float | None = None) -> list[dict[str, Any]]:
        """Up to `limit` traces, newest first: of one `sid` if given, answered after the epoch
        time `after` if given, none older than the retention."""
        oldest = max(time.time() - self.ttl, after or 0)
        needle = f'"sid":{json.dumps(sid)},' if sid else None
        found: list[dict[str, Any]] = []
        offset = 0
        while len(found) < limit:
            count = limit if needle is None else READ_CHUNK
            chunk = await self.redis.zrevrangebyscore(
                CALLS_KEY, "+inf", f"({oldest}", start=offset, num=count, withscores=True)
            for raw, score in chunk:
                if needle is None or needle in raw:
                    found.append({**json.loads(raw), "answered": score})
            if len(chunk) < count:
                break
            offset += count
        return found[:limit]
