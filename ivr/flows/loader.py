"""Loading `flows/*.yaml` into validated flows, and choosing the flow for a webhook."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from ivr.flows.model import Flow
from ivr.flows.step import STEP_KINDS, Channel
from ivr.validation import describe_errors
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
        """Queue name -> the flows that may route to it, e.g. `flow loyalty_routing`."""
        users: dict[str, list[str]] = {}
        for flow in self.flows.values():
            for queue in sorted(flow.routed_queues()):
                users.setdefault(queue, []).append(flow.name)
        return {queue: "flow " + ", ".join(names) for queue, names in users.items()}


def load_flow_file(path: Path, secrets: Collection[str] | None = None) -> Flow:
    """Load and check one flow; with `secrets` (the names of the secrets set), every secret
    the flow needs must be among them."""
    try:
        data = read_yaml(path)
    except YamlFileError as exc:
        raise FlowLoadError([str(exc)]) from None
    try:
        flow = Flow.from_data(data, name=path.stem)
    except ValidationError as exc:
        problems = describe_errors(exc, collection="steps", item="step", tags=STEP_KINDS)
        raise FlowLoadError([f"{path}: {problem}" for problem in problems]) from None
    unset = flow.unset_secrets(secrets) if secrets is not None else []
    if unset:
        raise FlowLoadError([f"{path}: {problem}" for problem in unset])
    return flow


def load_flows(directory: Path, queue_names: Collection[str] | None = None,
               secrets: Collection[str] | None = None) -> FlowSet:
    """Load and check every flow in `directory`; with `queue_names`, routes must name those
    queues; with `secrets` (the names of the secrets set), each flow's must be set.

    Raises FlowLoadError listing every problem found, in every file.
    """
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise FlowLoadError([f"{directory}: no flow files (*.yaml); set IVR_FLOWS_DIR"])
    problems: list[str] = []
    flow_set = FlowSet()
    sources: dict[str, Path] = {}
    for path in paths:
        try:
            flow = load_flow_file(path, secrets)
        except FlowLoadError as exc:
            problems.extend(exc.problems)
            continue
        if flow.name in sources:
            problems.append(f"{path}: flow name {flow.name!r} is also used by {sources[flow.name]}")
            continue
        sources[flow.name] = path
        flow_set.flows[flow.name] = flow
        if queue_names is not None:
            problems.extend(_unknown_queues(path, flow, queue_names))
        problems.extend(_bind(flow_set, flow, path, sources))
    if problems:
        raise FlowLoadError(problems)
    for channel in CHANNELS:
        if channel not in flow_set.defaults:
            log.warning(
                "no default flow for %s: webhooks to numbers no flow names get a polite "
                "goodbye. Set `trigger.default: true` on one %s flow.",
                channel,
                channel,
            )
    return flow_set


def _unknown_queues(path: Path, flow: Flow, queue_names: Collection[str]) -> list[str]:
    problems = []
    if flow.fallback_queue not in queue_names:
        problems.append(f"{path}: fallback_queue: {flow.fallback_queue!r} is not a queue")
    for step_id, step in flow.steps.items():
        queue = getattr(step, "queue", None)
        if queue is not None and queue not in queue_names:
            known = ", ".join(sorted(queue_names))
            problems.append(f"{path}: step {step_id!r}: queue {queue!r} is not a queue ({known})")
    return problems


def _bind(flow_set: FlowSet, flow: Flow, path: Path, sources: dict[str, Path]) -> list[str]:
    problems = []
    if not flow.trigger.numbers and not flow.trigger.default:
        problems.append(f"{path}: trigger: the flow serves no call: give it `numbers` or "
                        "`default: true`")
    for channel in flow.trigger.channels:
        if flow.trigger.default:
            other = flow_set.defaults.setdefault(channel, flow)
            if other is not flow:
                problems.append(
                    f"{path}: trigger: both this flow and {sources[other.name]} are the "
                    f"default {channel} flow"
                )
        for number in flow.trigger.numbers:
            other = flow_set.by_number.setdefault((channel, number), flow)
            if other is not flow:
                problems.append(
                    f"{path}: trigger: {channel} {number} is already bound to "
                    f"{sources[other.name]}"
                )
    return problems
