"""Admin input turned into a valid queue, or into errors that name each field. The API and the
web page both go through here, and through the same checks as the queues file at start-up.
Also what a change would do to a queue, field by field, as the page and `ivr queues` show it."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

from pydantic import ValidationError

from ivr.queues import Queue, changed_fields, check_queue_name
from ivr.redis.queue_store import RECORD_META


class InvalidInput(Exception):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


def queue_from_input(name: str, data: Any, queues: AbstractSet[str] | None = None) -> Queue:
    """The queue described by `data` (a JSON object) for the queue called `name`. `queues`, the
    queues this process knows, lets a refusal for other fields name a missing overflow too (the
    store, which checks overflows against Redis itself, would only say so once they are
    fixed)."""
    errors = []
    try:
        check_queue_name(name)
    except ValueError as exc:
        errors.append({"field": "name", "message": str(exc)})
    if not isinstance(data, dict):
        raise InvalidInput([*errors, {"field": "", "message": "the body must be a JSON object"}])
    # A client may send back a record it was answered unchanged: the fields the store sets
    # (and a write's list of the fields it changed) are ignored.
    fields = {k: v for k, v in data.items() if k not in (*RECORD_META, "name", "changed")}
    if "name" in data and data["name"] != name:
        errors.append({"field": "name", "message": f"does not match the URL's queue {name!r}"})
    try:
        queue = Queue.model_validate(fields)
    except ValidationError as exc:
        errors += [
            {"field": ".".join(str(p) for p in e["loc"]) or "",
             "message": e["msg"].removeprefix("Value error, ")}
            for e in exc.errors()
        ]
    if errors:
        overflow = fields.get("overflow")
        if (queues is not None and isinstance(overflow, str) and overflow not in queues
                and overflow != name and not any(e["field"] == "overflow" for e in errors)):
            errors.append({"field": "overflow", "message": f"{overflow!r} is not a queue"})
        raise InvalidInput(errors)
    return queue


def patched_queue(name: str, queue: Queue, patch: dict[str, Any],
                  queues: AbstractSet[str] | None = None) -> Queue:
    """`queue` with the fields of `patch` replaced (a JSON merge patch, RFC 7396: None sends a
    field back to its default), every other field as it was: a change writes only the fields
    its author chose."""
    fields = {**queue.model_dump(mode="json"), **patch}
    return queue_from_input(name, {k: v for k, v in fields.items() if v is not None}, queues)


def field_errors(message: str, field: str) -> InvalidInput:
    return InvalidInput([{"field": field, "message": message}])


def shown(value: Any) -> str:
    """A field's value in words: a list as its items, no value as "(none)"."""
    if value is None or value == "" or value == []:
        return "(none)"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


class FieldComparison(NamedTuple):
    """One field of a queue, as shown, before and after a change."""

    field: str
    before: str
    after: str
    differs: bool


def compare_queues(before: Queue | None, after: Queue) -> list[FieldComparison]:
    """Every field of the queue before and after (None before: it does not exist), in the
    model's order, and whether the change touches it."""
    differing = set(changed_fields(before, after))
    old = before.model_dump(mode="json") if before is not None else {}
    new = after.model_dump(mode="json")
    return [FieldComparison(field, shown(old.get(field)), shown(new[field]), field in differing)
            for field in Queue.model_fields]
