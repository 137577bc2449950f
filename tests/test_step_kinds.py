"""Step kinds as the unit of change: each kind is its module in ivr/flows/steps/ and its test
data in tests/steps/<kind>.yaml, and nothing else of the engine names it."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import pkgutil
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
import yaml
from pydantic import AfterValidator, TypeAdapter
from pydantic.fields import FieldInfo

import ivr.flows.steps
from ivr.flows.loader import FlowLoadError, load_flow_file, load_flows
from ivr.flows.model import KINDS, AnyStep, Flow
from ivr.flows.runner import run_flow
from ivr.flows.step import Contact, Run, Step
from ivr.flows.steps import (
    FLOWS_README,
    REFERENCE_END,
    REFERENCE_START,
    WRITE_README,
    kind_reference,
    load_step_kinds,
    readme_with_reference,
    reference_markdown,
)
from ivr.queues import QueueName, check_queue_name

ROOT = Path(__file__).resolve().parent.parent
STEPS_PACKAGE = ROOT / "ivr" / "flows" / "steps"
DATA = Path(__file__).parent / "steps"
QUEUES = {"gold", "standard"}
# A case: what it shows, the flow's steps (and any other part of the flow), then either the start
# of the load error or the actions of a run on `channel`, resumed with each of `answers`.
CASE_KEYS = {"description", "steps", "flow", "error", "channel", "params", "at", "answers",
             "actions"}
_STEP: TypeAdapter[Step] = TypeAdapter(AnyStep)
# Test data makes no HTTP request: a fetch's cases are load errors and URLs that are not http.
_NO_HTTP: Any = None


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, under `if TYPE_CHECKING:` too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_steps_import_nothing_of_the_flow_model_that_imports_them() -> None:
    step_modules = [ROOT / "ivr" / "flows" / "step.py", *sorted(STEPS_PACKAGE.glob("*.py"))]
    circular = {path.name: sorted(name for name in _imported_modules(path)
                                  if name == "ivr.flows.model")
                for path in step_modules}
    assert not any(circular.values()), circular


def test_every_module_of_the_steps_package_is_a_kind_of_the_flow_model() -> None:
    modules = {info.name for info in pkgutil.iter_modules(ivr.flows.steps.__path__)
               if not info.name.startswith("_")}
    assert set(KINDS) == modules
    assert load_step_kinds() == KINDS
    assert list(KINDS) == sorted(KINDS)


def test_nothing_outside_the_steps_package_names_a_kind() -> None:
    """The graph, the trace, the hand-off and the cache purge read what a kind declares (its
    shape, exits, traced records, hand-off note, purgeable cache), not its class."""
    kind_modules = {f"ivr.flows.steps.{kind}" for kind in KINDS}
    naming = {str(path.relative_to(ROOT)): sorted(_imported_modules(path) & kind_modules)
              for path in sorted((ROOT / "ivr").rglob("*.py"))
              if STEPS_PACKAGE not in path.parents}
    assert not any(naming.values()), {path: names for path, names in naming.items() if names}


# --- queues: what a kind declares it may route to ----------------------------------------------

class _TwoQueuesStep(Step):
    """A trial kind, not registered: it routes to one of two queues, neither named `queue`."""

    kind: Literal["two_queues"]
    first: QueueName
    second: QueueName | None = None
    queue_fields = ("first", "second")


def test_a_flow_routes_to_the_queues_its_kinds_declare() -> None:
    flow = Flow.model_construct(name="trial", fallback_queue="standard", steps={
        "pick": _TwoQueuesStep(kind="two_queues", first="gold", second="vip"),
        "pick_one": _TwoQueuesStep(kind="two_queues", first="night")})
    assert flow.routed_queues() == {"standard", "gold", "vip", "night"}


def test_the_queues_a_kind_declares_are_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump({
        "trigger": {"channels": ["voice"], "default": True}, "fallback_queue": "standard",
        "steps": {"to_vip": {"kind": "route", "queue": "vip"}}}))
    with pytest.raises(FlowLoadError) as error:
        load_flows(tmp_path, queue_names={"standard"}, secrets=())
    assert [problem.split(": ", 1)[1] for problem in error.value.problems] == [
        "steps.to_vip.queue: 'vip' is not a queue: the queues are standard"]


def _names_a_queue(field: FieldInfo) -> bool:
    """Whether a field is a `QueueName` (alone, optional or in a collection)."""
    def is_queue_check(item: Any) -> bool:
        return isinstance(item, AfterValidator) and item.func is check_queue_name

    def validated_as_queue(annotation: Any) -> bool:
        if get_origin(annotation) is Annotated:
            base, *metadata = get_args(annotation)
            return any(map(is_queue_check, metadata)) or validated_as_queue(base)
        return any(validated_as_queue(arg) for arg in get_args(annotation))

    return any(map(is_queue_check, field.metadata)) or validated_as_queue(field.annotation)


def test_every_field_of_a_kind_that_names_a_queue_is_declared() -> None:
    assert _names_a_queue(_TwoQueuesStep.model_fields["second"])
    undeclared = {kind: names for kind, cls in KINDS.items()
                  if (names := sorted(name for name, field in cls.model_fields.items()
                                      if _names_a_queue(field)
                                      and name not in cls.queue_fields))}
    assert not undeclared, f"declare these fields in the kind's queue_fields: {undeclared}"


# --- examples: each kind's docstring, loaded, and the same in flows/README.md ------------------

def docstring_example(kind: str) -> str:
    """The YAML example of a kind's docstring: its first ```yaml block."""
    reference = kind_reference(KINDS[kind])
    return reference.split("```yaml\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_s_docstring_example_loads_in_a_flow(kind: str, tmp_path: Path) -> None:
    text = docstring_example(kind)
    example = yaml.safe_load(text)
    parts = example if "steps" in example else {"steps": example}
    steps = dict(parts["steps"])
    given = sorted(set(re.findall(r"\bvars\.(\w+)", text)))
    if given:  # what the example reads, set before it
        steps = {"given": {"kind": "set", "vars": dict.fromkeys(given, "x"),
                           "next": next(iter(steps))}, **steps}
    for step in list(steps.values()):  # where the example goes: an end step each
        for target in _STEP.validate_python(step).exits():
            steps.setdefault(target, {"kind": "end"})
    flow = {"trigger": {"channels": ["voice", "messaging"], "default": True},
            "fallback_queue": "standard", **parts, "steps": steps}
    (tmp_path / f"{kind}.yaml").write_text(yaml.safe_dump(flow, sort_keys=False))
    load_flow_file(tmp_path / f"{kind}.yaml", secrets=())


def test_the_step_kinds_section_of_flows_readme_is_the_kinds_docstrings() -> None:
    readme = FLOWS_README.read_text()
    assert readme_with_reference(readme, reference_markdown()) == readme, (
        f"the step kinds of flows/README.md are not their docstrings: run `{WRITE_README}`")


def test_the_reference_has_each_kind_under_its_heading_in_reading_order() -> None:
    headings = re.findall(r"^### `(\w+)`$", reference_markdown(), re.M)
    assert sorted(headings) == sorted(KINDS)
    assert headings[:2] == ["fetch", "branch"], "the kinds the example flow opens with come first"
    orders = [KINDS[kind].reference_order for kind in headings]
    assert orders == sorted(orders)


def test_a_kind_without_an_example_in_its_docstring_has_no_reference() -> None:
    class _Undocumented(Step):
        kind: Literal["undocumented"]

    with pytest.raises(ValueError, match="needs an example of the step in a ```yaml block"):
        kind_reference(_Undocumented)


def test_the_generated_region_replaces_what_was_there_and_keeps_the_rest() -> None:
    readme = f"# Flows\n\n{REFERENCE_START}\n\n### `old`\n\ngone\n\n{REFERENCE_END}\n\n## Next\n"
    assert readme_with_reference(readme, "### `new`\n\nhere\n") == (
        f"# Flows\n\n{REFERENCE_START}\n\n### `new`\n\nhere\n\n{REFERENCE_END}\n\n## Next\n")
    with pytest.raises(ValueError, match="no generated region"):
        readme_with_reference("# Flows\n", "### `new`\n")


def _write_readme(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivr.flows.steps", "--write-readme", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_command_writes_the_step_kinds_into_the_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Flows\n\n{REFERENCE_START}\n{REFERENCE_END}\n")
    written = _write_readme(readme)
    assert (written.returncode, written.stdout) == (0, f"{readme}: step kinds written\n")
    assert readme.read_text() == (
        f"# Flows\n\n{REFERENCE_START}\n\n{reference_markdown()}\n{REFERENCE_END}\n")
    again = _write_readme(readme)
    assert (again.returncode, again.stdout) == (0, f"{readme}: the step kinds are up to date\n")


def test_the_command_refuses_a_readme_without_the_generated_region(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Flows\n")
    refused = _write_readme(readme)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"{readme}: no generated region: put {REFERENCE_START}")
    assert readme.read_text() == "# Flows\n"


# --- test data: tests/steps/<kind>.yaml, for every kind -----------------------------------------

def test_every_kind_has_its_test_data() -> None:
    missing = [kind for kind in KINDS if not (DATA / f"{kind}.yaml").is_file()]
    assert not missing, f"add tests/steps/<kind>.yaml for {missing}"
    assert sorted(path.stem for path in DATA.glob("*.yaml")) == sorted(KINDS)


CASES = [(path.stem, case) for path in sorted(DATA.glob("*.yaml"))
         for case in yaml.safe_load(path.read_text())]


@pytest.mark.parametrize(("kind", "case"), CASES,
                         ids=[f"{kind}: {case['description']}" for kind, case in CASES])
def test_a_kind_does_what_its_test_data_says(kind: str, case: dict[str, Any],
                                             tmp_path: Path) -> None:
    assert set(case) <= CASE_KEYS, f"unknown keys {sorted(set(case) - CASE_KEYS)}"
    assert ("error" in case) != ("actions" in case), "a case expects an error or actions"
    flow_data = {"trigger": {"channels": ["voice", "messaging"], "default": True},
                 "fallback_queue": "standard", **case.get("flow", {}), "steps": case["steps"]}
    assert any(step.get("kind") == kind for step in case["steps"].values())
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(flow_data, sort_keys=False))
    if "error" in case:
        with pytest.raises(FlowLoadError) as error:
            load_flow_file(path, queue_names=QUEUES, secrets=())
        assert len(error.value.problems) == 1, error.value.problems
        assert error.value.problems[0].removeprefix(f"{path}: ").startswith(case["error"]), (
            error.value.problems[0])
        return
    flow = load_flow_file(path, queue_names=QUEUES, secrets=())
    actions = asyncio.run(_actions_of(flow, case))
    assert actions == case["actions"]


async def _actions_of(flow: Flow, case: dict[str, Any]) -> list[dict[str, Any]]:
    """What the flow asks the channel to do over the case's turns: a run, then one per answer."""
    loop = asyncio.get_running_loop()
    at = case.get("at")
    run = Run(contact=Contact("+15551234567", "+15551234567", case.get("channel", "voice")),
              params=case.get("params", {"Body": "hello"}), settings={}, http=_NO_HTTP,
              deadline=loop.time() + 3,
              clock=(lambda: datetime.fromisoformat(at)) if at else lambda: datetime.now(UTC))
    outcome = await run_flow(flow, run)
    for answer in case.get("answers", []):
        assert outcome.waiting_at is not None, "an answer, but the flow waits for none"
        outcome = await run_flow(flow, run, resume_at=outcome.waiting_at, answer=answer)
    assert outcome.fallback_reason is None, outcome.fallback_reason
    return [{"action": action.json_name, **dataclasses.asdict(action)} for action in run.actions]
