"""One turn of a flow: a session and a contact's input in, the outcome and the session after it
out, with whether that session is kept. The server takes a turn for every webhook that runs a
flow, and `ivr simulate` for each simulated webhook, so a simulation restores state, counts
turns and decides what a session keeps exactly as the server does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ivr.flows.actions import Action, RouteToQueue
from ivr.flows.http import HttpClient
from ivr.flows.model import Flow
from ivr.flows.runner import Outcome, run_flow
from ivr.flows.step import Channel, Contact, Run
from ivr.flows.upstream import Upstreams
from ivr.metrics import FALLBACK_DEADLINE
from ivr.queues import Queue
from ivr.session import Session

log = logging.getLogger("ivr.webhook")  # where operators read what a webhook did


@dataclass(frozen=True)
class Surroundings:
    """What a flow reads and uses besides its session and input, the same for every turn."""

    settings: dict[str, Any]  # what flows read as `settings.*`
    secrets: dict[str, str]  # `secrets.*`, which only fetch steps read
    http: HttpClient
    deadline: float  # the seconds a turn may take to decide
    upstreams: Upstreams | None = None  # circuit breakers and the fetch cache; None: neither
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass(slots=True)  # one a turn: no frozen dataclass's object.__setattr__ per field
class TakenTurn:
    """A turn of `flow`: its outcome, its run (the variables it built), the queues its routes
    resolved to, and the session after it (its state, the turn counted, where it waits, the
    queue it stays with); the session is `kept` for the contact's next webhook, or else ends."""

    flow: Flow
    outcome: Outcome
    run: Run
    actions: list[Action]  # the outcome's, each route to a queue that exists
    queues: dict[str, Queue]  # the configuration of each queue routed to
    routed: str | None  # the queue the contact is handed to, if any
    session: Session
    resumed: bool  # the turn continued a stored session; else it is the contact's new visit
    kept: bool


async def take_turn(flow: Flow, session: Session, contact: Contact, params: dict[str, str],
                    surroundings: Surroundings, queue: Callable[[str], Queue | None], *,
                    answer: str | None = None, start_at: str | None = None,
                    resumed: bool = False) -> TakenTurn:
    """Run `flow` for `session`: resumed at the step it waits at with the contact's `answer`,
    from `start_at`, or from the start; `queue` looks up the live queue configuration.
    `resumed`: the session was stored (a turn before kept it), rather than new."""
    run = new_run(session, contact, params, surroundings)
    if start_at is not None:
        outcome = await run_flow(flow, run, start_at=start_at)
    else:
        outcome = await run_flow(flow, run, resume_at=session.waiting_at, answer=answer)
    actions, queues = resolve_queues(outcome.actions, queue, flow.fallback_queue)
    routed = next((a.queue for a in actions if isinstance(a, RouteToQueue)), None)
    after = Session(flow.name, session.memory, run.state(), session.turn + 1,
                    waiting_at=outcome.waiting_at, flow_version=session.flow_version,
                    later_keys=session.later_keys)
    if outcome.waiting_at is None and routed is not None and kept_after_route(
            flow, contact.channel, queues.get(routed), resumed):
        after.routed_to, after.route_step = routed, outcome.trace[-1]
        if contact.channel == "messaging":
            after.reroute_from = step_to_reroute_from(flow, outcome, run)
    kept = outcome.waiting_at is not None or after.routed_to is not None
    return TakenTurn(flow, outcome, run, actions, queues, routed, after, resumed, kept)


def kept_after_route(flow: Flow, channel: Channel, queue: Queue | None, resumed: bool) -> bool:
    """Whether a session is kept after routing to `queue`. Messaging: the sticky hand-off, if
    the queue takes messages at all. Voice: so that a retried answer is replayed (a call that
    was asked something), and for `unanswered`."""
    if channel == "messaging":
        return queue is not None and queue.message_to is not None
    return resumed or flow.unanswered is not None


def step_to_reroute_from(flow: Flow, outcome: Outcome, run: Run) -> str | None:
    """Where a hand-off made because a lookup failed is decided again from: the first step of
    this turn whose upstream did not answer (a timeout, a 5xx, an open circuit...), or the step
    the decision deadline cut short. None for a route the flow decided on an answer, also after
    a lookup that failed in an earlier turn (the contact answered a question since), or after a
    step's error (a bug: deciding again would only raise again)."""
    for step_id in outcome.trace:  # this turn's steps: run.steps also has earlier turns'
        step = flow.steps.get(step_id)
        if step is not None and step.went_unanswered(run.steps.get(step_id, {})):
            return step_id
    return outcome.trace[-1] if outcome.fallback_reason == FALLBACK_DEADLINE else None


def new_run(session: Session, contact: Contact, params: dict[str, str],
            surroundings: Surroundings) -> Run:
    """A run for one webhook, with the session's memory and state restored into it."""
    run = Run(
        contact=Contact(contact.number, contact.address, contact.channel, memory=session.memory),
        params=params,
        settings=surroundings.settings,
        secrets=surroundings.secrets,
        http=surroundings.http,
        upstreams=surroundings.upstreams,
        clock=surroundings.clock,
        deadline=asyncio.get_running_loop().time() + surroundings.deadline,
    )
    run.restore(session.state)
    return run


def resolve_queues(
    actions: list[Action], lookup: Callable[[str], Queue | None], fallback_queue: str
) -> tuple[list[Action], dict[str, Queue]]:
    """The configuration of each queue routed to (`lookup`: the live one). A route to a queue
    that no longer exists (an admin removed it) goes to the flow's fallback queue instead."""
    queues: dict[str, Queue] = {}
    resolved: list[Action] = []
    for action in actions:
        if isinstance(action, RouteToQueue):
            for name in (action.queue, fallback_queue):
                queue = lookup(name)
                if queue is not None:
                    queues[name] = queue
                    action = RouteToQueue(name, action.note)
                    break
            else:
                log.error("queues %r and %r are not configured", action.queue, fallback_queue)
        resolved.append(action)
    return resolved, queues
