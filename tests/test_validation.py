"""Validation errors in plain words: one line per mistake, with the place, what is wrong and the
fix, read from pydantic's error types rather than its English."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ivr.flows.model import Flow
from ivr.flows.step import STEP_KINDS, StepId
from ivr.queues import QueueConfig
from ivr.validation import Explained, describe_errors


class Hop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["hop"]
    next: StepId
    timeout: int = Field(default=5, ge=1, le=60)
    secret: Annotated[str, StringConstraints(pattern=r"^[a-z]+$")] = "abc"


def errors(data: dict[str, Any], show_input: bool = True) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        Hop.model_validate(data)
    return describe_errors(refused.value, Hop, show_input=show_input)


def test_a_misspelt_required_field_is_one_mistake_with_the_field_meant() -> None:
    """pydantic reports `nxt` as an extra field and `next` as a missing one: two errors for
    one slip of the keyboard."""
    assert errors({"kind": "hop", "nxt": "b"}) == ["unknown field 'nxt': did you mean 'next'?"]


def test_an_unknown_field_close_to_no_field_lists_the_fields() -> None:
    assert errors({"kind": "hop", "next": "b", "colour": "red"}) == [
        "unknown field 'colour': the fields are kind, next, secret, timeout"]


def test_a_value_out_of_range_says_the_limit() -> None:
    assert errors({"kind": "hop", "next": "b", "timeout": 90}) == [
        "timeout: 90 is too large: at most 60"]


def test_a_pattern_without_words_never_shows_the_regular_expression_alone() -> None:
    [line] = errors({"kind": "hop", "next": "b", "secret": "ABC"})
    assert line.startswith("secret: does not have the expected form")


def test_values_are_left_out_when_the_data_may_hold_secrets() -> None:
    """Settings are described with show_input=False: a token in the wrong place is not printed."""
    lines = errors({"kind": "hop", "next": "s3cret token", "timeout": "s3cret"}, show_input=False)
    assert lines == ["next: must be a step id: a letter, then up to 63 letters, digits, '_' or '-'",
                     "timeout: expected a whole number, got text"]
    assert not any("s3cret" in line for line in lines)


def _unexplained_patterns(annotation: Any, metadata: tuple[Any, ...], where: str,
                          seen: set[type]) -> list[str]:
    """Places in a model whose string pattern has no `Explained` words."""
    while get_origin(annotation) is Annotated:
        metadata = metadata + tuple(annotation.__metadata__)
        annotation = get_args(annotation)[0]
    found = []
    patterned = any(isinstance(m, StringConstraints) and m.pattern for m in metadata)
    if patterned and not any(isinstance(m, Explained) for m in metadata):
        found.append(where)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in seen:
            seen.add(annotation)
            for name, field in annotation.model_fields.items():
                found += _unexplained_patterns(field.annotation, tuple(field.metadata),
                                               f"{annotation.__name__}.{name}", seen)
    elif get_origin(annotation) in (Union, types.UnionType, dict, list, tuple, set, frozenset):
        for argument in get_args(annotation):
            found += _unexplained_patterns(argument, (), where, seen)
    return found


@pytest.mark.parametrize("model", [Flow, QueueConfig, *STEP_KINDS.values()],
                         ids=lambda model: model.__name__)
def test_every_patterned_field_says_in_words_what_it_expects(model: type[BaseModel]) -> None:
    """A pattern mismatch was told as pydantic's `String should match pattern '^\\+[1-9]...'`:
    every patterned type of flows and queues carries its words (`explained_pattern`)."""
    assert _unexplained_patterns(Hop, (), "Hop", set()) == ["Hop.secret"]  # the walk finds one
    assert _unexplained_patterns(model, (), model.__name__, set()) == []
