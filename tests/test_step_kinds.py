"""Step kinds as the unit of change: each kind is its module in ivr/flows/steps/ and its test
data in tests/steps/<kind>.yaml, and nothing else of the engine names it."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import ivr.flows.steps
from ivr.flows.model import KINDS
from ivr.flows.steps import load_step_kinds

ROOT = Path(__file__).resolve().parent.parent
STEPS_PACKAGE = ROOT / "ivr" / "flows" / "steps"


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
    modules = {info.name for info in pkgutil.iter_modules(ivr.flows.steps.__path__)}
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
