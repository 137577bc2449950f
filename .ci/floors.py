"""Print pip constraints pinning every dependency of pyproject.toml (the test extra's too) to its
floor, the version after `>=`: CI installs the lowest versions the project allows with them."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# name, [extras], specifiers (PEP 508, without markers: the project uses none)
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)")
_FLOOR = re.compile(r">=\s*([^,\s]+)")


def floors(pyproject: Path) -> list[str]:
    """`name==floor` for each requirement; SystemExit naming one without a floor."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = []
    for requirement in requirements:
        match = _REQUIREMENT.fullmatch(requirement)
        floor = _FLOOR.search(match.group(2)) if match else None
        if match is None or floor is None:
            raise SystemExit(f"floors: {requirement!r} in {pyproject} has no '>=' floor: "
                             "give it one, the lowest version the project works with")
        pins.append(f"{match.group(1)}=={floor.group(1)}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pyproject.toml"))))
