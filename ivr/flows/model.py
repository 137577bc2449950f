"""A flow: its trigger, its fallback queue and its graph of steps, validated as one model."""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from ivr.flows.durations import duration
from ivr.flows.schedules import Schedule, ScheduleName
from ivr.flows.step import Channel, Step, StepId
from ivr.flows.steps import load_step_kinds
from ivr.flows.templates import READABLE, SETTINGS, Compiled
from ivr.queues import QueueName
from ivr.settings import secret_name_problem, secret_variable
from ivr.validation import (
    E164_PATTERN,
    Problem,
    Problems,
    Where,
    closest,
    explained_pattern,
    suggestion,
    unknown,
    with_article,
)

# The kinds a flow may use, found once, here, before the flow model that needs their union.
KINDS = load_step_kinds()
AnyStep = Annotated[Union[tuple(KINDS.values())], Field(discriminator="kind")]  # noqa: UP007
PhoneNumber = explained_pattern(f"^{E164_PATTERN}$", "an E.164 number",
                                "write it as +15551234567 (plus sign, country code, number)")
Duration = duration(timedelta(seconds=30), timedelta(days=30))

MAX_STEPS = 200
# How alike an unset secret's name and a set one's are for the one to be told as a misspelling
# of the other (difflib's ratio: crm_tokn and crm_token 0.94, crm_key and crm_token 0.75).
SECRET_TYPO_SIMILARITY = 0.8
# What a flow can read of the contact without the contact memory.
CONTACT_WITHOUT_MEMORY = frozenset({"number", "address", "channel"})


class Trigger(BaseModel):
    """Which webhooks start the flow: the channels, and the `To` numbers (none: any number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[Channel, ...] = Field(min_length=1)
    numbers: tuple[PhoneNumber, ...] = ()
    default: bool = Field(
        default=False, description="Serve numbers that no other flow of the channel names."
    )


class SecretUse(BaseModel):
    """How a flow uses one secret (`secrets: {crm_token: {optional: true}}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optional: bool = Field(
        default=False,
        description="The flow loads without it: unset, it reads as empty (and a header that "
        "renders empty is not sent). Otherwise an unset secret stops the load.")


class Flow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", description="Set from the file name when the file has none.")
    description: str = ""
    trigger: Trigger
    fallback_queue: QueueName = Field(
        description="Where a contact goes when the flow cannot finish (error, deadline)."
    )
    start: StepId | None = Field(default=None, description="First step; default the first listed.")
    unanswered: StepId | None = Field(
        default=None,
        description="Voice: where the call goes when the queue's SIP URIs, its fallbacks and "
        "its overflow queues were all busy or failed. Unset: an apology, then hang up.",
    )
    expire_after: Duration = Field(
        default=timedelta(minutes=10),
        description="How long a call or conversation waiting for an answer, or handed over to a "
        "queue (messaging), stays in its session: seconds, or e.g. '30m', '2h', '1d'.",
    )
    steps: dict[StepId, AnyStep] = Field(min_length=1, max_length=MAX_STEPS)
    schedules: dict[ScheduleName, Schedule] = Field(
        default_factory=dict, description="Weekly opening hours that `hours` steps name."
    )
    secrets: dict[str, SecretUse] = Field(
        default_factory=dict,
        description="How the flow uses the secrets its fetch steps read (secrets.<name>, set by "
        "IVR_SECRET_<NAME>): a secret not listed here is required.")
    _reads_contact_memory: bool = PrivateAttr(default=True)
    # Each secret a template reads -> where it is first read (steps, lookup, url).
    _secrets_read: dict[str, Where] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _graph_is_sound(self) -> Flow:
        """Every problem of the graph at once, each at its field (the loader reports each)."""
        # A step that needs part of the flow (an hours step, its schedule) takes it here, so it
        # runs without the flow.
        problems = [Problem(("steps", step_id, *problem.where), problem.what)
                    for step_id, step in self.steps.items() for problem in step.bind(self)]
        dangling = unknown_targets(self.steps, self.steps, self.start, self.unanswered)
        problems += dangling + unknown_reads(self.steps, self.steps)
        if not dangling:  # reachability and loops only mean something on a whole graph
            reachable = self._reachable()
            problems += [Problem(("steps", step_id), "no step leads to it (unreachable)")
                         for step_id in self.steps if step_id not in reachable]
            loop = self._loop_without_wait()
            if loop:
                problems.append(Problem(
                    ("steps", loop[0]), f"the loop {' -> '.join(loop)} never waits for an "
                    "answer (it would spin forever): put a step that waits (ask) in it"))
        if problems:
            raise Problems(problems)
        return self

    def _loop_without_wait(self) -> list[str] | None:
        """A cycle through steps none of which waits, if the graph has one."""
        done: set[str] = set()
        for root in self.steps:
            path: list[str] = []
            on_path: set[str] = set()
            stack = [(root, iter(self._moves(root)))]
            if root in done:
                continue
            path.append(root)
            on_path.add(root)
            while stack:
                step_id, moves = stack[-1]
                target = next(moves, None)
                if target is None:
                    stack.pop()
                    path.pop()
                    on_path.discard(step_id)
                    done.add(step_id)
                elif target in on_path:
                    return [*path[path.index(target):], target]
                elif target not in done:
                    path.append(target)
                    on_path.add(target)
                    stack.append((target, iter(self._moves(target))))
        return None

    def _moves(self, step_id: str) -> list[str]:
        step = self.steps[step_id]
        return [] if step.waits else step.exits()

    def _reachable(self) -> set[str]:
        seen: set[str] = set()
        pending = [self.start_step, *([self.unanswered] if self.unanswered else [])]
        while pending:
            step_id = pending.pop()
            if step_id not in seen:
                seen.add(step_id)
                pending.extend(self.steps[step_id].exits())
        return seen

    @model_validator(mode="after")
    def _find_contact_memory_reads(self) -> Flow:
        self._reads_contact_memory = any(
            compiled.reads_beyond("contact", CONTACT_WITHOUT_MEMORY)
            for step in self.steps.values() for _, compiled in _compiled_fields(step))
        return self

    @model_validator(mode="after")
    def _secrets_go_only_to_apis(self) -> Flow:
        """Secrets are read by name, only where a kind allows it (a fetch's url, headers and
        body), and every secret the flow declares is read."""
        problems = [Problem(("secrets", name), problem) for name in self.secrets
                    if (problem := secret_name_problem(name))]
        first_read, misread = secret_reads(self.steps)
        problems += misread
        for name in self.secrets:
            if name not in first_read:
                meant = closest(name, first_read)
                problems.append(Problem(("secrets", name), "declared, but no step reads it" + (
                    f": did you mean {meant!r}?" if meant else "")))
        if problems:
            raise Problems(problems)
        self._secrets_read = first_read
        return self

    def unset_optional_secrets(self, secrets_set: Collection[str]) -> list[str]:
        """The secrets the flow reads, may do without, and are not among `secrets_set`."""
        return [name for name in self._secrets_read
                if name not in secrets_set and name in self.secrets and self.secrets[name].optional]

    @functools.cached_property
    def reads_contact_memory(self) -> bool:
        """Whether a template or condition reads what the contact memory holds (is_returning,
        first_seen, a saved field...): only then is the memory loaded for a visit. Cached: a
        private attribute is read through pydantic's `__getattr__` on every call."""
        return self._reads_contact_memory

    @property
    def start_step(self) -> str:
        return self.start or next(iter(self.steps))

    def routed_queues(self) -> set[str]:
        """Every queue the flow may route to, its fallback included."""
        queues = {self.fallback_queue}
        queues.update(queue for step in self.steps.values() for _, queue in step.queue_targets())
        return queues

    def step(self, step_id: str) -> Step:
        return self.steps[step_id]

    @classmethod
    def from_data(cls, data: Any, name: str) -> Flow:
        if isinstance(data, dict) and not data.get("name"):
            data = {**data, "name": name}
        return cls.model_validate(data)


def unknown_targets(steps: Mapping[str, Step], step_ids: Collection[str], start: str | None,
                    unanswered: str | None) -> list[Problem]:
    """Where `start`, `unanswered` and each step's exits name no step of `step_ids`."""
    def missing(target: str) -> str:
        return unknown("a step", target, step_ids, "steps")

    problems = [Problem((name,), missing(target))
                for name, target in (("start", start), ("unanswered", unanswered))
                if target is not None and target not in step_ids]
    for step_id, step in steps.items():
        problems += [Problem(("steps", step_id, *where), missing(target))
                     for where, target in step.exit_targets() if target not in step_ids]
    return problems


def unknown_reads(steps: Mapping[str, Step], step_ids: Collection[str]) -> list[Problem]:
    """Where a template of `steps` reads a name no flow can read (`parms`), `vars.<name>` that
    no step sets, or `steps.<id>` that is none of `step_ids` or that the step never records:
    Jinja would read any of them as nothing, and a branch take `else`. Variables are checked
    only when `steps` holds every step of `step_ids` (a step left out, being broken, may set
    them)."""
    variables = frozenset().union(*(step.vars_set() for step in steps.values()))
    every_step = all(step_id in steps for step_id in step_ids)
    problems: list[Problem] = []
    for step_id, step in steps.items():
        for where, compiled in _compiled_fields(step):
            found = [unknown("a name a flow can read", name, READABLE, "names")
                     for name in sorted(compiled.variables() - READABLE)]
            found += [_unset_variable(path[0], variables) for path in compiled.paths_read("vars")
                      if every_step and path and path[0] not in variables]
            found += [problem for path in compiled.paths_read("steps")
                      if path and (problem := _unrecorded(path, steps, step_ids))]
            problems += [Problem(("steps", step_id, *where), what)
                         for what in dict.fromkeys(found)]
    return problems


def unknown_settings(steps: Mapping[str, Step], settings: Collection[str]) -> list[Problem]:
    """Where a template of `steps` reads `settings.<name>` for a name not among `settings`,
    those a flow can read: Jinja would read it as nothing (`settings.loyalty_url`)."""
    problems: list[Problem] = []
    for step_id, step in steps.items():
        for where, compiled in _compiled_fields(step):
            names = dict.fromkeys(path[0] for path in compiled.paths_read(SETTINGS)
                                  if path and path[0] not in settings)
            problems += [Problem(("steps", step_id, *where), _with_fix(
                f"settings.{name} names no setting a flow can read",
                suggestion(name, settings, "settings a flow can read"))) for name in names]
    return problems


def secret_reads(steps: Mapping[str, Step]) -> tuple[dict[str, Where], list[Problem]]:
    """Each secret the templates of `steps` read, with where it is first read; and the reads
    refused: by a computed name or whole, under a name no secret has, or in a field whose
    value a contact, an agent or a session could see."""
    first_read: dict[str, Where] = {}
    problems: list[Problem] = []
    for step_id, step in steps.items():
        for where, compiled in _compiled_fields(step):
            at = ("steps", step_id, *where)
            try:
                names = compiled.secrets_read()
            except ValueError as exc:
                problems.append(Problem(at, str(exc)))
                continue
            for name in sorted(names):
                problem = secret_name_problem(name)
                if problem is None and where[0] not in step.secret_fields:
                    problem = (f"secrets.{name} can only be read in a fetch step's url, "
                               "headers and body")
                if problem is not None:
                    problems.append(Problem(at, problem))
                else:
                    first_read.setdefault(name, at)
    return first_read, problems


def _unset_secret(name: str, secrets_set: Collection[str]) -> str:
    meant = closest(name, secrets_set, cutoff=SECRET_TYPO_SIMILARITY)
    if meant is not None:  # a misspelling reads as empty, and the API refuses the request
        return (f"secrets.{name} is not set: did you mean {meant!r}? "
                f"({secret_variable(meant)} is set)")
    return (f"secrets.{name} is not set: set {secret_variable(name)}, or declare it optional "
            f"in the flow (secrets: {{{name}: {{optional: true}}}})")


def _unset_variable(name: str, variables: Collection[str]) -> str:
    fix = (suggestion(name, variables, "variables set") if variables
           else "a fetch or ask step's `save`, or a set step's `vars`, sets one")
    return _with_fix(f"no step sets vars.{name}", fix)


def _unrecorded(path: tuple[str, ...], steps: Mapping[str, Step],
                step_ids: Collection[str]) -> str | None:
    """What is wrong with reading `steps.<path>`, if anything."""
    if path[0] not in step_ids:
        return _with_fix(f"steps.{path[0]} names no step",
                         suggestion(path[0], step_ids, "steps"))
    step = steps.get(path[0])
    if step is None:  # broken: what it records is not known
        return None
    kind = getattr(step, "kind", "")
    if not step.records:
        return f"steps.{path[0]} is never recorded: {with_article(kind)} step records nothing"
    if len(path) > 1 and path[1] not in step.records:
        return _with_fix(f"steps.{path[0]}.{path[1]} is never recorded",
                         suggestion(path[1], step.records,
                                    f"fields {with_article(kind)} step records"))
    return None


def _with_fix(what: str, fix: str) -> str:
    return f"{what}: {fix}" if fix else what


_STEP: TypeAdapter[Step] = TypeAdapter(AnyStep)
_TRIGGER = TypeAdapter(Trigger)
_QUEUE_NAME: TypeAdapter[str] = TypeAdapter(QueueName)
_STEP_ID: TypeAdapter[str] = TypeAdapter(StepId)
_SECRET_USES: TypeAdapter[dict[str, SecretUse]] = TypeAdapter(dict[str, SecretUse])


@dataclass
class FlowOutline:
    """What later checks read of a flow (its trigger, fallback queue, steps and the secrets they
    read), taken from a valid flow, or from the parts of a broken one that are valid on their
    own: a misspelt field in one step does not hide where the other steps go, which queues,
    settings and secrets they name, or a number bound twice."""

    name: str
    trigger: Trigger | None
    fallback_queue: str | None
    steps: Mapping[str, Step]
    problems: list[Problem] = field(default_factory=list)  # of where the valid steps go
    # Each secret the steps read -> where it is first read; those the flow may do without.
    secrets_read: Mapping[str, Where] = field(default_factory=dict)
    optional_secrets: frozenset[str] = frozenset()

    @classmethod
    def of(cls, flow: Flow) -> FlowOutline:
        return cls(flow.name, flow.trigger, flow.fallback_queue, flow.steps,
                   secrets_read=flow._secrets_read,
                   optional_secrets=frozenset(name for name, use in flow.secrets.items()
                                              if use.optional))

    def unset_secrets(self, secrets_set: Collection[str]) -> list[Problem]:
        """A problem for each secret the flow needs that is not among `secrets_set`, with the
        closest one set when it looks misspelt."""
        return [Problem(where, _unset_secret(name, secrets_set))
                for name, where in self.secrets_read.items()
                if name not in secrets_set and name not in self.optional_secrets]

    @classmethod
    def of_broken(cls, data: Any, name: str) -> FlowOutline | None:
        """The parts of `data`, a flow that did not validate as a whole, that are valid on their
        own; None when it is not even a mapping."""
        if not isinstance(data, dict):
            return None
        raw_steps = data.get("steps") if isinstance(data.get("steps"), dict) else {}
        steps = {step_id: step for step_id, raw in raw_steps.items()
                 if (step := _valid_but_unknown_fields(raw)) is not None}
        step_ids = [step_id for step_id in raw_steps if isinstance(step_id, str)]
        start, unanswered = (_valid(_STEP_ID, data.get(key)) for key in ("start", "unanswered"))
        problems = (unknown_targets(steps, step_ids, start, unanswered)
                    + unknown_reads(steps, step_ids))
        uses = _valid(_SECRET_USES, data.get("secrets") or {})  # None: they are broken
        secrets_read = secret_reads(steps)[0]
        if uses is None or not secrets_read.keys() >= uses.keys():
            # Which secrets are optional is unknown while a declaration is broken or names a
            # secret no valid step reads (a misspelling, told as such): none is told unset.
            uses, secrets_read = {}, {}
        return cls(str(data.get("name") or name), _valid(_TRIGGER, data.get("trigger")),
                   _valid(_QUEUE_NAME, data.get("fallback_queue")), steps, problems,
                   secrets_read=secrets_read,
                   optional_secrets=frozenset(name for name, use in uses.items()
                                              if use.optional))


def _valid_but_unknown_fields(raw: Any) -> Step | None:
    """The step `raw` describes, if valid once its unknown fields are left out: a misspelt
    field is reported on its own, and must not hide where the step goes or what it reads."""
    try:
        return _STEP.validate_python(raw)
    except ValidationError as exc:
        errors = exc.errors()
    if not all(error["type"] == "extra_forbidden" for error in errors):
        return None
    try:
        for error in errors:  # the first part of a place is the step's kind
            raw = _without(raw, tuple(error["loc"][1:]))
    except (KeyError, IndexError, TypeError):  # a place not found as pydantic names it
        return None
    return _valid(_STEP, raw)


def _without(data: Any, where: tuple[Any, ...]) -> Any:
    """`data` without the key at `where`, copying only the mappings and lists on the way."""
    copy = dict(data) if isinstance(data, dict) else list(data)
    if len(where) == 1:
        del copy[where[0]]
    else:
        copy[where[0]] = _without(copy[where[0]], where[1:])
    return copy


def _valid(adapter: TypeAdapter[Any], value: Any) -> Any:
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None


def _compiled_fields(value: Any, where: Where = ()) -> Iterator[tuple[Where, Compiled]]:
    """Every template, expression and condition in a step, however deep its fields hold them,
    with where it is (`("headers", "Authorization")`, `("cases", 0, "when")`)."""
    if isinstance(value, Compiled):
        yield where, value
        return
    if isinstance(value, BaseModel):
        items: Iterable[tuple[Any, Any]] = ((name, getattr(value, name))
                                            for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield from _compiled_fields(item, (*where, key))
