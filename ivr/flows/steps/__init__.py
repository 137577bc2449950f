"""One module per step kind, each registering its kind in `STEP_KINDS` when imported."""

from __future__ import annotations

import importlib
import pkgutil

from ivr.flows.step import STEP_KINDS, Step


def load_step_kinds() -> dict[str, type[Step]]:
    """Every step kind, by its `kind` name: each module of this package imported, in name
    order, so a new kind is a new module here and nothing else."""
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
    return dict(sorted(STEP_KINDS.items()))
