"""One module per step kind, each registering its kind in `STEP_KINDS` when imported; its
docstring is the kind's reference, which `python -m ivr.flows.steps --write-readme` writes into
the *Step kinds* section of flows/README.md."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

from ivr.flows.step import STEP_KINDS, Step

FLOWS_README = Path(__file__).resolve().parents[3] / "flows" / "README.md"
WRITE_README = ".venv/bin/python -m ivr.flows.steps --write-readme"
REFERENCE_START = f"<!-- generated: {WRITE_README}; edit the kinds' docstrings -->"
REFERENCE_END = "<!-- end generated -->"


def load_step_kinds() -> dict[str, type[Step]]:
    """Every step kind, by its `kind` name: each module of this package imported, in name
    order, so a new kind is a new module here and nothing else (a module whose name starts
    with `_`, such as `__main__`, is not a kind)."""
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
        if not module.startswith("_"):
            importlib.import_module(f"{__name__}.{module}")
    return dict(sorted(STEP_KINDS.items()))


def kind_reference(kind: type[Step]) -> str:
    """A kind's reference in Markdown: its module's docstring, which holds a YAML example."""
    module = sys.modules[kind.__module__]
    reference = inspect.cleandoc(module.__doc__ or "")
    if "\n```yaml\n" not in f"\n{reference}":
        raise ValueError(f"{module.__file__}: the module's docstring is the kind's reference, and "
                         "needs an example of the step in a ```yaml block")
    return reference + "\n"


def reference_markdown() -> str:
    """The step kinds of flows/README.md, each under its heading, in reading order
    (`Step.reference_order`, then by name)."""
    kinds = sorted(load_step_kinds().items(), key=lambda item: (item[1].reference_order, item[0]))
    return "\n".join(f"### `{name}`\n\n{kind_reference(kind)}" for name, kind in kinds)


def readme_with_reference(readme: str, reference: str) -> str:
    """`readme` with the region between its generated markers made of `reference`
    (`reference_markdown()`)."""
    start, end = readme.find(REFERENCE_START), readme.find(REFERENCE_END)
    if start < 0 or end < start:
        raise ValueError(f"no generated region: put {REFERENCE_START} and {REFERENCE_END}, each on "
                         "a line of its own, where the step kinds go")
    return f"{readme[:start]}{REFERENCE_START}\n\n{reference}\n{readme[end:]}"
