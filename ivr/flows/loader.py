"""Loading `flows/*.yaml` into validated flows, and choosing the flow for a webhook."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from ivr.flows.model import Flow, FlowOutline, unknown_settings
from ivr.flows.step import Channel
from ivr.settings import secret_variable
from ivr.validation import Problem, describe_problems, unknown
from ivr.yamlfile import YamlFileError, parse_yaml, read_yaml

log = logging.getLogger("ivr.flows")

CHANNELS: tuple[Channel, ...] = get_args(Channel)
# The name of a flow file in a published version: a file of IVR_FLOWS_DIR, without a directory.
# Any name a flows directory can hold and `load_flows` reads (spaces too), but no directory, no
# hidden file, no control character.
FLOW_FILE_NAME = re.compile(r"(?!\.)[^/\\\x00-\x1f]{1,200}\.ya?ml")


@dataclass(frozen=True)
class FlowProblem:
    """One problem of a set of flows, as an API answers it: the file ("" for none in
    particular), the place in it (`steps.menu.options`; "" for the whole file) and what is
    wrong."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.field, self.message) if part)


class FlowLoadError(Exception):
    """One or more flows are broken; each line names the file, the step and the problem.
    `located`: the same problems as (file, field, message); by default each line whole."""

    def __init__(self, problems: list[str], located: list[FlowProblem] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.located = located if located is not None else unlocated(problems)

    @classmethod
    def of(cls, located: list[FlowProblem]) -> FlowLoadError:
        return cls([str(problem) for problem in located], located)


def unlocated(problems: list[str]) -> list[FlowProblem]:
    """Lines of problems as FlowProblems, each line its message, for lines made without one."""
    return [FlowProblem("", "", problem) for problem in problems]


@dataclass
class FlowSet:
    """The loaded flows and which one serves each (channel, `To` number); `version`: the
    published version they are (ivr.flow_versions), 0 for flows read from files."""

    flows: dict[str, Flow] = field(default_factory=dict)
    by_number: dict[tuple[Channel, str], Flow] = field(default_factory=dict)
    defaults: dict[Channel, Flow] = field(default_factory=dict)
    version: int = 0

    def select(self, channel: Channel, to_number: str) -> Flow | None:
        return self.by_number.get((channel, to_number)) or self.defaults.get(channel)


@dataclass(frozen=True)
class FlowFile:
    """A flow file to load: one in a directory, or one of a published version's texts."""

    label: str  # how problems name it: its path, or its name in a version
    stem: str  # the flow's name unless the file sets `name`
    read: Callable[[], object]  # its YAML data; raises YamlFileError
    # Which of two files claiming the same thing changed last (sorts after the other).
    recency: Callable[[], tuple[int, str]]

    @classmethod
    def at(cls, path: Path) -> FlowFile:
        return cls(str(path), path.stem, lambda: read_yaml(path),
                   lambda: (_changed_at(path), str(path)))

    @classmethod
    def of_text(cls, label: str, text: str, order: int) -> FlowFile:
        return cls(label, Path(label).stem, lambda: parse_yaml(text, label),
                   lambda: (order, label))


def load_flow_file(path: Path, queue_names: Collection[str] | None = None,
                   secrets: Collection[str] | None = None,
                   settings: Collection[str] | None = None) -> Flow:
    """Load and check one flow as `load_flows` checks each file: with `queue_names`, its routes
    must name those queues; with `secrets` (the names of the secrets set), every secret the flow
    needs must be among them; with `settings` (the names of those a flow can read), every
    setting it reads."""
    flow, _, problems = _read_flow(FlowFile.at(path), queue_names, secrets, settings)
    if flow is None:
        raise FlowLoadError([f"{path}: {problem}" for problem in problems])
    return flow


def _read_flow(file: FlowFile, queue_names: Collection[str] | None,
               secrets: Collection[str] | None, settings: Collection[str] | None
               ) -> tuple[Flow | None, FlowOutline | None, list[Problem]]:
    """The flow in `file`, or None if it has any problem; its outline for the checks across
    files (None when even that cannot be read); and its problems. Every check of one file,
    for the server, a publish, `ivr flows validate` and `ivr simulate` alike."""
    flow, outline, problems = _parse_flow(file)
    if outline is not None and queue_names is not None:
        problems += _unknown_queues(outline, queue_names)
    if outline is not None and secrets is not None:
        problems += outline.unset_secrets(secrets)
    if outline is not None and settings is not None:
        problems += unknown_settings(outline.steps, settings)
    return (None if problems else flow), outline, problems


def _parse_flow(file: FlowFile) -> tuple[Flow | None, FlowOutline | None, list[Problem]]:
    """`_read_flow` but for the queues, secrets and settings."""
    try:
        data = file.read()
    except YamlFileError as exc:
        return None, None, [Problem((), exc.problem)]
    if data is None:  # nothing but comments, or nothing at all
        return None, None, [Problem((), "the file is empty: a flow needs `trigger`, "
                                    "`fallback_queue` and `steps`")]
    try:
        flow = Flow.from_data(data, name=file.stem)
    except ValidationError as exc:
        problems = describe_problems(exc, Flow)
        # The flow's own checks (where steps go) never ran when a field failed: run them on
        # the steps that are valid, so that fixing a typo does not reveal the next problem.
        outline = FlowOutline.of_broken(data, file.stem)
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
    return _load([FlowFile.at(path) for path in _flow_paths(directory)], queue_names, secrets,
                 settings)


def _flow_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FlowLoadError([f"{directory.absolute()}: no such directory: set IVR_FLOWS_DIR to "
                             "the directory of the flow files (*.yaml, *.yml); a relative path "
                             "is relative to the current directory"])
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise FlowLoadError([f"{directory}: no flow files (*.yaml, *.yml); set IVR_FLOWS_DIR"])
    return paths


def read_flow_texts(directory: Path) -> dict[str, str]:
    """The texts of the flow files in `directory`, by file name: what a publish sends."""
    texts = {}
    for path in _flow_paths(directory):
        try:
            texts[path.name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FlowLoadError([f"{path}: cannot read: {exc}"]) from None
    return texts


def load_flow_texts(files: Mapping[str, str], queue_names: Collection[str] | None = None,
                    secrets: Collection[str] | None = None,
                    settings: Collection[str] | None = None, *, version: int = 0,
                    directory: Path | None = None) -> FlowSet:
    """Load and check the flows of a published version (file name -> text), as `load_flows`
    checks a directory's; problems name each file by its name (in `directory`, if they were
    read from there)."""
    if not files:
        raise FlowLoadError(["no flow files: a version has at least one *.yaml file"])
    bad = [FlowProblem(name, "", "not a flow file's name: a name ending in .yaml or .yml, "
                       "without a directory, not starting with `.`")
           for name in files if not FLOW_FILE_NAME.fullmatch(name)]
    if bad:
        raise FlowLoadError([f"{problem.file!r}: {problem.message}" for problem in bad], bad)
    names = sorted(files)
    flow_set = _load([FlowFile.of_text(str(directory / name) if directory else name,
                                       files[name], order)
                      for order, name in enumerate(names)], queue_names, secrets, settings)
    flow_set.version = version
    return flow_set


def _load(files: list[FlowFile], queue_names: Collection[str] | None,
          secrets: Collection[str] | None, settings: Collection[str] | None) -> FlowSet:
    problems: list[tuple[str, Problem]] = []
    flow_set = FlowSet()
    claims = _Claims()
    for file in files:
        flow, outline, found = _read_flow(file, queue_names, secrets, settings)
        problems += [(file.label, problem) for problem in found]
        if outline is None:
            continue
        problems += [(file.label, problem) for problem in claims.add(file, outline)]
        if flow is not None:
            flow_set.flows.setdefault(flow.name, flow)
            _bind(flow_set, flow)
    problems += claims.conflicts()
    if problems:
        problems.sort(key=lambda found: found[0])  # stable: each file's in its order
        raise FlowLoadError.of([FlowProblem(label, problem.place, problem.what)
                                for label, problem in problems])
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
        self._claims: dict[tuple[str, ...], list[FlowFile]] = {}

    def add(self, file: FlowFile, outline: FlowOutline) -> list[Problem]:
        """Record what the flow in `file` claims; return what is wrong with its trigger alone."""
        self._claims.setdefault(("name", outline.name), []).append(file)
        trigger = outline.trigger
        if trigger is None:
            return []
        for channel in trigger.channels:
            if trigger.default:
                self._claims.setdefault(("default", channel), []).append(file)
            for number in dict.fromkeys(trigger.numbers):
                self._claims.setdefault(("number", channel, number), []).append(file)
        if not trigger.numbers and not trigger.default:
            return [Problem(("trigger",), "the flow serves no call: give it `numbers` or "
                            "`default: true`")]
        return []

    def conflicts(self) -> list[tuple[str, Problem]]:
        problems = []
        for claim, files in self._claims.items():
            if len(files) < 2:
                continue
            newest = max(files, key=lambda file: file.recency())
            problems.append((newest.label,
                             _conflict(claim, [f.label for f in files if f is not newest])))
        return problems


def _conflict(claim: tuple[str, ...], others: list[str]) -> Problem:
    named = " and ".join(others)
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
