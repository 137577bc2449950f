"""compact_json: orjson's speed, the standard library's answer for what orjson refuses."""

from __future__ import annotations

import json

from ivr.jsonfast import compact_json


def test_the_text_is_the_standard_librarys_compact_json() -> None:
    value = {"sid": "CA1", "steps": ["lookup", "route"], "fetches": {"lookup": {"status": 200,
             "elapsed_ms": 21.5, "cache": None}}, "from": "+1*******567", "note": "é ✓ \"q\""}
    assert compact_json(value) == json.dumps(value, separators=(",", ":"),
                                             ensure_ascii=False).encode()


def test_what_orjson_refuses_is_written_all_the_same() -> None:
    big = 123456789012345678901234567890  # past 64 bits: orjson raises
    assert json.loads(compact_json({"id": big})) == {"id": big}
    assert compact_json({1: "é"}) == '{"1":"é"}'.encode()  # a key not a string; UTF-8 all the same
