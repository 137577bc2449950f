"""py-spy on one server worker during a load run, and a summary of its raw (collapsed) stacks:
which functions the busy time is spent in, inclusive (anywhere on the stack) and self (leaf)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from procs import Processes, Started

_LINE = re.compile(r":\d+\)$")
_REPO = str(Path(__file__).resolve().parent.parent) + "/"


@dataclass
class Profile:
    samples: int
    inclusive: Counter[str]
    leaf: Counter[str]

    def table(self, top: int = 30) -> str:
        """Top functions by inclusive share, without the frames every sample has (the loop's
        and uvicorn's entry points); then self time by package."""
        lines = [f"py-spy: {self.samples} busy samples (idle excluded)", "",
                 "inclusive   self  function (file)"]
        shown = [(frame, count) for frame, count in self.inclusive.most_common()
                 if count < 0.99 * self.samples][:top]
        for frame, count in shown:
            lines.append(f"{self._pct(count):8.1f}% {self._pct(self.leaf[frame]):5.1f}%  {frame}")
        lines += ["", "self time by package:"]
        for package, count in self.by_package().most_common(12):
            lines.append(f"{self._pct(count):8.1f}%  {package}")
        return "\n".join(lines)

    def by_package(self) -> Counter[str]:
        packages: Counter[str] = Counter()
        for frame, count in self.leaf.items():
            path = frame.rpartition(" (")[2].rstrip(")")
            packages[path.split("/")[0] if "/" in path else path] += count
        return packages

    def _pct(self, count: int) -> float:
        return 100 * count / self.samples


def start_py_spy(processes: Processes, pid: int, seconds: float, output: Path,
                 rate: int = 100) -> Started:
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", str(rate), "--format", "raw", "--output", str(output)]
    return processes.start("py-spy", argv)


def wait_py_spy(spy: Started, timeout: float) -> None:
    try:
        spy.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"py-spy still running after {timeout:.0f} s:\n{spy.tail()}") from None
    if spy.process.returncode != 0:
        raise RuntimeError(f"py-spy failed ({spy.process.returncode}):\n{spy.tail()}")


def _short(frame: str) -> str:
    """'handle (/x/site-packages/starlette/routing.py:73)' -> 'handle (starlette/routing.py)'"""
    frame = _LINE.sub(")", frame.strip())
    for marker in ("site-packages/", _REPO, "/lib/python3"):
        if marker in frame:
            name, _, path = frame.partition(" (")
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = "stdlib " + path.split("/", 1)[1]
            return f"{name} ({path}"
    return frame


def summarise(raw: Path) -> Profile:
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        samples += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
    return Profile(samples, inclusive, leaf)
