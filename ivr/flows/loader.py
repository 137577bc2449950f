"""Loading `flows/*.yaml` into validated flows, and choosing the flow for a webhook."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from ivr.flows.model import Flow, FlowOutline, unknown_settings
from ivr.flows.step import Channel
from ivr.settings import secret_variable
from ivr.validation import Problem, describe_problems, unknown
from ivr.yamlfile import YamlFileError, read_yaml

log = logging.getLogger("ivr.flows")

CHANNELS: tuple[Channel, ...] = get_args(Channel)


class FlowLoadError(Exception):
    """One or more flows are broken; each line names the file, the step and the problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class FlowSet:
    """The loaded flows and which one serves each (channel, `To` number)."""

    flows: dict[str, Flow] = field(default_factory=dict)
    by_number: dict[tuple[Channel, str], Flow] = field(default_factory=dict)
    defaults: dict[Channel, Flow] = field(default_factory=dict)

    def select(self, channel: Channel, to_number: str) -> Flow | None:
        return self.by_number.get((channel, to_number)) or self.defaults.get(channel)

    def queue_users(self) -> dict[str, str]:
        """Queue name -> the flows that may route to it, in words: `flow loyalty_routing`,
        `flows new_vs_returning, vip_by_email`."""
        users: dict[str, list[str]] = {}
        for flow in self.flows.values():
            for queue in sorted(flow.routed_queues()):
                users.setdefault(queue, []).append(flow.name)
        return {queue: ("flows " if len(names) > 1 else "flow ") + ", ".join(sorted(names))
                for queue, names in users.items()}


def load_flow_file(path: Path, queue_names: Collection[str] | None = None,
                   secrets: Collection[str] | None = None,
                   settings: Collection[str] | None = None) -> Flow:
    """Load and check one flow as `load_flows` checks each file: with `queue_names`, its routes
    must name those queues; with `secrets` (the names of the secrets set), every secret the flow
    needs must be among them; with `settings` (the names of those a flow can read), every
    setting it reads."""
    flow, _, problems = _read_flow(path, queue_names, secrets, settings)
    if flow is None:
        raise FlowLoadError([f"{path}: {problem}" for problem in problems])
    return flow


def _read_flow(path: Path, queue_names: Collection[str] | None,
               secrets: Collection[str] | None, settings: Collection[str] | None
               ) -> tuple[Flow | None, FlowOutline | None, list[Problem]]:
    """The flow in `path`, or None if it has any problem; its outline for the checks across
    files (None when even that cannot be read); and its problems. Every check of one file,
    for the server, `ivr flows validate` and `ivr simulate` alike."""
    flow, outline, problems = _parse_flow(path)
    if outline is not None and queue_names is not None:
        problems += _unknown_queues(outline, queue_names)
    if outline is not None and secrets is not None:
        problems += outline.unset_secrets(secrets)
    if outline is not None and settings is not None:
        problems += unknown_settings(outline.steps, settings)
    return (None if problems else flow), outline, problems


def _parse_flow(path: Path) -> tuple[Flow | None, FlowOutline | None, list[Problem]]:
    """`_read_flow` but for the queues, secrets and settings."""
    try:
        data = read_yaml(path)
    except YamlFileError as exc:
        return None, None, [Problem((), exc.problem)]
    if data is None:  # nothing but comments, or nothing at all
        return None, None, [Problem((), "the file is empty: a flow needs `trigger`, "
                                    "`fallback_queue` and `steps`")]
    try:
        flow = Flow.from_data(data, name=path.stem)
    except ValidationError as exc:
        problems = describe_problems(exc, Flow)
        # The flow's own checks (where steps go) never ran when a field failed: run them on
        # the steps that are valid, so that fixing a typo does not reveal the next problem.
        outline = FlowOutline.of_broken(data, path.stem)
        fields_failed = all(error["loc"] for error in exc.errors())
        if outline is not None and fields_failed:
            problems += outline.problems
        return None, outline, problems
    return flow, FlowOutline.of(flow), []


def load_flows(directory: Path, queue_names: Collection[str] | None = None,
               secrets: Collection[str] | None = None,
               settings: Collection[str] | None = None) -> FlowSet:
    """Load and check every flow in `directory`; with `queue_names`, routes must name those
    queues; with `secrets` (the names of the secrets set), each flow's must be set; with
    `settings` (the names of those a flow can read, `Settings.flow_settings()`), each setting
    a flow reads must be one.

    Raises FlowLoadError listing every problem found, in every file, grouped by file.
    """
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise FlowLoadError([f"{directory}: no flow files (*.yaml); set IVR_FLOWS_DIR"])
    problems: list[tuple[Path, Problem]] = []
    flow_set = FlowSet()
    claims = _Claims()
    for path in paths:
        flow, outline, found = _read_flow(path, queue_names, secrets, settings)
        problems += [(path, problem) for problem in found]
        if outline is None:
            continue
        problems += [(path, problem) for problem in claims.add(path, outline)]
        if flow is not None:
            flow_set.flows.setdefault(flow.name, flow)
            _bind(flow_set, flow)
    problems += claims.conflicts()
    if problems:
        problems.sort(key=lambda found: str(found[0]))  # stable: each file's in its order
        raise FlowLoadError([f"{path}: {problem}" for path, problem in problems])
    for flow in flow_set.flows.values():
        for name in flow.unset_optional_secrets(secrets) if secrets is not None else ():
            # Not an error (the flow says it can do without), but a request that goes without
            # its token is refused by an API that needs one: say so once, at the start.
            log.warning("flow %s: secrets.%s is not set (declared optional): its requests go "
                        "without it; set %s if the API needs it", flow.name, name,
                        secret_variable(name))
    for channel in CHANNELS:
        if channel not in flow_set.defaults:
            log.warning(
                "no default flow for %s: webhooks to numbers no flow names get a polite "
                "goodbye. Set `trigger.default: true` on one %s flow.",
                channel,
                channel,
            )
    return flow_set


def _unknown_queues(outline: FlowOutline, queue_names: Collection[str]) -> list[Problem]:
    def missing(queue: str) -> str:
        return unknown("a queue", queue, queue_names, "queues")

    problems = []
    if outline.fallback_queue is not None and outline.fallback_queue not in queue_names:
        problems.append(Problem(("fallback_queue",), missing(outline.fallback_queue)))
    for step_id, step in outline.steps.items():
        problems += [Problem(("steps", step_id, *where), missing(queue))
                     for where, queue in step.queue_targets() if queue not in queue_names]
    return problems


def _bind(flow_set: FlowSet, flow: Flow) -> None:
    for channel in flow.trigger.channels:
        if flow.trigger.default:
            flow_set.defaults.setdefault(channel, flow)
        for number in flow.trigger.numbers:
            flow_set.by_number.setdefault((channel, number), flow)


class _Claims:
    """What each flow file claims that only one may have: its flow's name, a number on a channel,
    a channel's default. A conflict is told once, at the file changed last (the likely newcomer,
    or the edit that made the conflict), naming every other file that claims the same."""

    def __init__(self) -> None:
        self._claims: dict[tuple[str, ...], list[Path]] = {}

    def add(self, path: Path, outline: FlowOutline) -> list[Problem]:
        """Record what the flow in `path` claims; return what is wrong with its trigger alone."""
        self._claims.setdefault(("name", outline.name), []).append(path)
        trigger = outline.trigger
        if trigger is None:
            return []
        for channel in trigger.channels:
            if trigger.default:
                self._claims.setdefault(("default", channel), []).append(path)
            for number in dict.fromkeys(trigger.numbers):
                self._claims.setdefault(("number", channel, number), []).append(path)
        if not trigger.numbers and not trigger.default:
            return [Problem(("trigger",), "the flow serves no call: give it `numbers` or "
                            "`default: true`")]
        return []

    def conflicts(self) -> list[tuple[Path, Problem]]:
        problems = []
        for claim, paths in self._claims.items():
            if len(paths) < 2:
                continue
            newest = max(paths, key=lambda path: (_changed_at(path), str(path)))
            problems.append((newest, _conflict(claim, [p for p in paths if p != newest])))
        return problems


def _conflict(claim: tuple[str, ...], others: list[Path]) -> Problem:
    named = " and ".join(str(path) for path in others)
    if claim[0] == "name":
        return Problem(("name",), f"the flow name {claim[1]!r} is also used by {named}: "
                       "give one of them another `name` (or file name)")
    if claim[0] == "default":
        verb = "is" if len(others) == 1 else "are"
        return Problem(("trigger", "default"), f"{named} {verb} also the default {claim[1]} "
                       "flow: keep `default: true` on one")
    _, channel, number = claim
    return Problem(("trigger", "numbers"), f"{channel} {number} is also served by {named}: "
                   "a number belongs to one flow per channel; remove it from one")


def _changed_at(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # gone since it was read: it changed last
        return 2**63
