"""`python -m ivr.flows.steps`: print the step kinds' reference, or, with `--write-readme`, write
it into flows/README.md (after a kind's docstring changed, or a kind was added)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ivr.flows.steps import FLOWS_README, readme_with_reference, reference_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ivr.flows.steps",
        description="The reference of the step kinds, made of their modules' docstrings.")
    parser.add_argument("--write-readme", nargs="?", const=FLOWS_README, type=Path,
                        metavar="PATH", help="write it into the Step kinds section of this file "
                        f"(default {FLOWS_README}) instead of printing it")
    args = parser.parse_args(argv)
    try:
        reference = reference_markdown()
    except ValueError as exc:  # a kind without its reference
        print(exc, file=sys.stderr)
        return 2
    if args.write_readme is None:
        print(reference, end="")
        return 0
    path: Path = args.write_readme
    try:
        readme = path.read_text()
        written = readme_with_reference(readme, reference)
    except OSError as exc:
        print(f"{path}: {exc.strerror}: give the path of flows/README.md", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if written == readme:
        print(f"{path}: the step kinds are up to date")
    else:
        path.write_text(written)
        print(f"{path}: step kinds written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
