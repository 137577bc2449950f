"""What every step kind shares: the base model, the registry of kinds, and the run they act on.

A step knows its flow only through `FlowParts`, what it reads of it when the flow loads: the
flow model imports the steps, never the other way round."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from ivr.flows.actions import Action
from ivr.flows.http import HttpClient
from ivr.flows.schedules import Schedule
from ivr.flows.templates import Template
from ivr.validation import NAME_RULE, Problem, Where, explained_pattern

if TYPE_CHECKING:  # not a circle: the upstreams know nothing of steps
    from ivr.flows.upstream import Upstreams

StepId = explained_pattern(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$", "a step id", NAME_RULE)
VarName = explained_pattern(
    r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", "a variable name",
    "a letter or '_', then up to 63 letters, digits or '_' (no '-' or '.')")
# A BCP 47 tag as Twilio's <Say> and <Gather> take it: en-US, es-ES, fr-FR, cmn-CN...
Language = explained_pattern(r"^[a-z]{2,3}-[A-Z]{2}$", "a language tag",
                             "write it as en-US (language, '-', country in capitals)")
Channel = Literal["voice", "messaging"]
# What agents read with a message handed to a queue, unless the step that routed says otherwise.
DEFAULT_HANDOFF_NOTE = Template("{{ contact.number }}: {{ params.Body }}")

STEP_KINDS: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step kind loadable under its `kind` name."""
    kind = cls.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
    assert kind not in STEP_KINDS, f"step kind {kind!r} is registered twice"
    STEP_KINDS[kind] = cls
    return cls


class Wait:
    """Returned by a step that waits for the contact's answer (see `Step.resume`)."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = Wait()
StepResult = str | None | Wait  # the next step id, None when the flow has finished, or WAIT


class FlowParts(Protocol):
    """What a step reads of the flow that holds it, once, when the flow loads (`Step.bind`)."""

    @property
    def name(self) -> str: ...

    @property
    def steps(self) -> Mapping[str, Step]: ...

    @property
    def schedules(self) -> Mapping[str, Schedule]: ...


class PurgeableCache(Protocol):
    """A step whose answers are cached and can be purged, for one caller or all of them."""

    @property
    def cache_scope(self) -> str: ...

    def cache_key(self, upstreams: Upstreams, variables: dict[str, Any]) -> str | None: ...

    def request_variables(self) -> frozenset[str]: ...


def default_handoff_note(variables: dict[str, Any]) -> str:
    """The note of a hand-off that no step's own note describes (the flow's fallback queue)."""
    return DEFAULT_HANDOFF_NOTE.render(variables).strip()


class Step(BaseModel):
    """A node of a flow. Subclasses declare `kind: Literal[...]` and their exits."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Fields that name the step to go to next, checked at load time.
    exit_fields: ClassVar[tuple[str, ...]] = ()
    # Fields that name a queue the step may route to: checked against the queues at load time,
    # and an admin cannot delete a queue a flow routes to.
    queue_fields: ClassVar[tuple[str, ...]] = ()
    # A step that waits for input may sit in a loop; a loop without one is refused at load.
    waits: ClassVar[bool] = False
    # The fields whose templates may read `secrets.*`: only what goes to an API, never what a
    # contact hears, an agent reads or a session keeps.
    secret_fields: ClassVar[tuple[str, ...]] = ()
    # What the step records for templates to read as `steps.<id>.<field>` (none: `steps.<id>`
    # stays undefined).
    records: ClassVar[tuple[str, ...]] = ()
    # Whether a call trace keeps what the step records: not when it may hold what the contact
    # typed or said.
    records_traced: ClassVar[bool] = False
    # How `ivr flows graph` draws the step: it does something and goes on, it decides where to
    # go, or the contact leaves the flow there.
    shape: ClassVar[Literal["action", "decision", "exit"]] = "action"
    # The step hands the contact to a queue: a call whose SIP targets all fail goes on to the
    # flow's `unanswered` step.
    hands_off: ClassVar[bool] = False
    # A kind whose steps may cache answers (`purgeable_cache` says whether this one does).
    may_cache: ClassVar[bool] = False
    # Where the kind's reference (its module's docstring) sits among the step kinds of
    # flows/README.md: lower first, then by name. A flow author reads the kinds in the order a
    # flow meets them; a kind that does not say comes last, so a new kind edits no list.
    reference_order: ClassVar[int] = 1000

    def vars_set(self) -> frozenset[str]:
        """The variables the step may set, which templates read as `vars.<name>`."""
        return frozenset()

    def exits(self) -> list[str]:
        """The step ids this step may go to."""
        return [target for _, target in self.exit_targets()]

    def exit_targets(self) -> list[tuple[Where, str]]:
        """Each step id this step may go to, with the field that names it (`next`)."""
        return self._values_named_by(self.exit_fields)

    def queue_targets(self) -> list[tuple[Where, str]]:
        """Each queue this step may route to, with the field that names it (`queue`)."""
        return self._values_named_by(self.queue_fields)

    def _values_named_by(self, fields: tuple[str, ...]) -> list[tuple[Where, str]]:
        return [((name,), value) for name in fields if (value := getattr(self, name)) is not None]

    def labelled_exits(self) -> list[tuple[str, str]]:
        """Each step id this step may go to, with the label of its edge in a graph (`next`)."""
        return [(str(where[-1]), target) for where, target in self.exit_targets()]

    def graph_detail(self) -> str:
        """What a graph shows after the step's kind (` to gold`), if anything."""
        return ""

    def handoff_note(self, variables: dict[str, Any]) -> str:
        """What agents read with each message of a contact this step handed to a queue."""
        return default_handoff_note(variables)

    def answers_are_choices(self) -> bool:
        """Whether the step's answers choose among options: a trace keeps such an answer as
        given, with the option chosen (`interpret`); any other answer is masked."""
        return False

    def interpret(self, answer: str, channel: str) -> str | None:
        """The value an answer stands for, or None when it is not a valid answer."""
        raise NotImplementedError(f"{type(self).__name__} takes no answer")

    def purgeable_cache(self) -> PurgeableCache | None:
        """The step's cache of answers, when it keeps one an admin can purge."""
        return None

    def went_unanswered(self, record: dict[str, Any]) -> bool:
        """Whether the step's record (`steps.<id>`) says the answer it needed never came (an
        upstream that did not answer): a later run of the step may decide otherwise."""
        return False

    def bind(self, flow: FlowParts) -> list[Problem]:
        """Take what the step needs from the flow that holds it, once, when the flow loads;
        return what is missing, at the step's fields (none: the step can run)."""
        return []

    async def run(self, run: Run) -> StepResult:
        """Do the step's work; return the next step id, None when the flow has finished, or WAIT
        after asking the contact something."""
        raise NotImplementedError

    async def resume(self, run: Run, answer: str | None) -> StepResult:
        """Continue a step that returned WAIT, with the contact's answer (None: no answer)."""
        raise NotImplementedError(f"{type(self).__name__} does not wait")


# Contact variables the engine sets; a flow cannot save fields under these names.
RESERVED_CONTACT_FIELDS = frozenset(
    {"number", "address", "channel", "is_returning", "first_seen", "last_seen"})


def check_contact_fields(names: Iterable[str]) -> None:
    """Refuse, in a step's validator, contact fields a flow would save under a reserved name."""
    reserved = sorted(RESERVED_CONTACT_FIELDS.intersection(names))
    if reserved:
        raise ValueError(f"{', '.join(reserved)} cannot be saved: the engine sets it")


@dataclass(frozen=True, slots=True)
class Contact:
    number: str  # From, with any `whatsapp:` prefix stripped
    address: str  # From, as Twilio sent it
    channel: Channel
    # What the contact memory holds: first_seen / last_seen (ISO times) and fields flows saved.
    memory: dict[str, str] = field(default_factory=dict)

    def as_variables(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.memory.items() if k not in RESERVED_CONTACT_FIELDS},
            "number": self.number,
            "address": self.address,
            "channel": self.channel,
            "is_returning": "first_seen" in self.memory,
            "first_seen": self.memory.get("first_seen"),
            "last_seen": self.memory.get("last_seen"),
        }


@dataclass
class Run:
    """One pass of a flow for one webhook: its inputs, the variables it builds and its actions."""

    contact: Contact
    params: dict[str, str]
    settings: dict[str, Any]  # only what flows may see
    http: HttpClient
    deadline: float  # event-loop time by which the route must be decided
    # The wall clock, injectable so that tests and the simulator can freeze time.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # `secrets.*`: the loader lets only the fields a kind names in `secret_fields` read them.
    secrets: dict[str, str] = field(default_factory=dict)
    # Circuit breakers and the fetch cache of the process; None: neither (the simulator).
    upstreams: Upstreams | None = None
    current_step: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-step outcomes
    attempts: dict[str, int] = field(default_factory=dict)  # answers tried, per asking step
    saved_fields: dict[str, str] = field(default_factory=dict)  # to write to contact memory
    # Every field saved since the session began, so later turns read them as contact.<field>.
    contact_fields: dict[str, str] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        # One dict for every template in the run; `vars` and `steps` fill in as steps run.
        self.variables = {
            "contact": self.contact.as_variables(),
            "params": self.params,
            "vars": self.vars,
            "steps": self.steps,
            "settings": self.settings,
            "secrets": self.secrets,
        }

    def save_contact_field(self, name: str, value: str) -> None:
        self.saved_fields[name] = value
        self.contact_fields[name] = value
        self.variables["contact"][name] = value

    def state(self) -> dict[str, Any]:
        """What a session keeps between webhooks (JSON-serialisable)."""
        return {"vars": self.vars, "steps": self.steps, "attempts": self.attempts,
                "contact": self.contact_fields}

    def restore(self, state: dict[str, Any]) -> None:
        self.vars.update(state.get("vars", {}))
        self.steps.update(state.get("steps", {}))
        self.attempts.update(state.get("attempts", {}))
        self.contact_fields.update(state.get("contact", {}))
        self.variables["contact"].update(self.contact_fields)

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def emit(self, action: Action) -> None:
        self.actions.append(action)
