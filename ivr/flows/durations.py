"""Durations in flow files: seconds, or a number with s, m, h or d (`90`, `30m`, `1d`)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError("must be seconds, or a number with s, m, h or d, e.g. '30m'")
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


def duration(shortest: timedelta, longest: timedelta) -> Any:
    """A pydantic type for a duration between `shortest` and `longest`."""

    def check(value: timedelta) -> timedelta:
        if not shortest <= value <= longest:
            raise ValueError(f"must be between {_say(shortest)} and {_say(longest)}")
        return value

    return Annotated[timedelta, BeforeValidator(_parse), AfterValidator(check),
                     PlainSerializer(lambda v: v.total_seconds(), return_type=float)]


def _say(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} seconds"
