"""JSON written on every call (call traces, cached answers, sessions), by orjson: much less CPU
than the standard library's for these small documents (bench/README.md, *Why the code is written
as it is*), and the text of `json.dumps(value, separators=(",", ":"), ensure_ascii=False)`."""

from __future__ import annotations

import json
from typing import Any

import orjson


def compact_json(value: Any) -> bytes:
    """`value` as compact JSON (no spaces), UTF-8. What orjson refuses (an integer past 64
    bits, a key that is not a string) is written by the standard library, as before. NaN and
    the infinities become null (the standard library wrote NaN, which is not JSON)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
