"""Pydantic's validation errors as lines a person can act on: `<where>: <what is wrong>[: <fix>]`.

One translation for flows, the queues file and settings. It reads each error's `type` and `ctx`,
never pydantic's English: a pattern mismatch says what the value should be (`Explained`), an
unknown name gets the closest known one, and a misspelt field is one mistake, not an unknown field
plus a missing one.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, StringConstraints, ValidationError

Where = tuple[str | int, ...]

# A phone number as Twilio writes it in From and To: E.164, + and the country code (flows'
# triggers, queues' message_to, `ivr call`, cache purges: one definition).
E164_PATTERN = r"\+[1-9][0-9]{6,14}"
# How a step, a schedule or another name of a flow is written.
NAME_RULE = "a letter, then up to 63 letters, digits, '_' or '-'"
YAML_BOOLEANS_HINT = "YAML reads yes, no, on and off unquoted as true or false; quote them"
# Fields listed in full when an unknown one is close to none of them; longer lists say little.
MAX_LISTED = 20


@dataclass(frozen=True)
class Explained:
    """`Annotated` metadata: what a value of a patterned type is and how to write one, for the
    message when a value does not match (pydantic would show the regular expression)."""

    noun: str  # "an E.164 number"
    rule: str  # "write it as +15551234567 (plus sign, country code, number)"


def explained_pattern(pattern: str, noun: str, rule: str) -> Any:
    """A string type constrained by `pattern`, whose mismatch is told in words."""
    return Annotated[str, StringConstraints(pattern=pattern), Explained(noun, rule)]


@dataclass(frozen=True)
class Problem:
    """One problem a check found, at `where` (field names, keys, indexes) below what it checked."""

    where: Where
    what: str

    @property
    def place(self) -> str:
        """`where`, dotted: `steps.menu.options`; "" for the whole of what was checked."""
        return _dotted(self.where)

    def __str__(self) -> str:
        return ": ".join(part for part in (self.place, self.what) if part)


class Problems(ValueError):
    """Raised by a validator that found several problems, each at its own place."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = tuple(problems)


def closest(name: str, known: Collection[str], cutoff: float = 0.6) -> str | None:
    """The known name `name` is most likely a misspelling of, if one is close enough (a
    similarity of `cutoff`, 0 to 1)."""
    by_folded = {candidate.casefold(): candidate for candidate in known}
    matches = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=cutoff)
    return by_folded[matches[0]] if matches else None


def suggestion(name: str, known: Collection[str], plural: str, listed: int = 12) -> str:
    """The fix for an unknown name: the closest known one, else every known one when they are
    few (`plural` names them: "the queues are gold, standard"), else nothing."""
    match = closest(name, known)
    if match is not None:
        return f"did you mean {match!r}?"
    if not known:
        return f"there are no {plural}"
    if len(known) <= listed:
        return f"the {plural} are {', '.join(sorted(known))}"
    return ""


def with_article(word: str) -> str:
    """`an ask`, `a fetch`: a step kind (or any word) after "is" in a message."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def unknown(what: str, name: str, known: Collection[str], plural: str) -> str:
    """`'vip' is not a queue: did you mean 'vips'?`, for a name that names nothing known."""
    fix = suggestion(name, known, plural)
    return f"{name!r} is not {what}" + (f": {fix}" if fix else "")


def describe_errors(
    exc: ValidationError, model: type[BaseModel], show_input: bool = True
) -> list[str]:
    """One line per mistake in `model`'s data, e.g.
    `steps.lookup: unknown field 'tiemout': did you mean 'timeout'?`.

    Locations are dotted (`steps.lookup.timeout`), without the discriminator tags pydantic puts in
    them. `show_input=False` keeps the values given out of the lines (settings may be secrets).
    """
    return [str(problem) for problem in describe_problems(exc, model, show_input)]


def describe_problems(
    exc: ValidationError, model: type[BaseModel], show_input: bool = True
) -> list[Problem]:
    """`describe_errors`' problems, each with its place, for a caller that names places its
    own way (settings by their environment variable)."""
    errors = [_Error.located(error, model) for error in exc.errors()]
    misspelt = _misspelt_required_fields(errors)
    problems: list[Problem] = []
    for error in errors:
        if error.type == "missing" and (error.parent, error.name) in misspelt:
            continue  # said once, as the unknown field that was meant to be this one
        for problem in error.problems(show_input):
            if problem not in problems:
                problems.append(problem)
    return problems


@dataclass
class _Error:
    """A pydantic error with its location resolved against the model's fields."""

    where: Where  # the location shown: discriminator tags left out
    is_key: bool  # the last part of `where` is a mapping's key that is itself wrong
    type: str
    input: Any
    ctx: dict[str, Any]
    msg: str
    annotation: Any  # the type expected at `where`, when the model says
    metadata: tuple[Any, ...]  # its `Annotated` metadata
    fields: tuple[str, ...]  # the fields of the model holding `where`'s last part, if a model
    noun: str  # what holds the field, for a missing one: "a fetch step"

    @classmethod
    def located(cls, error: Any, model: type[BaseModel]) -> _Error:
        loc = tuple(error["loc"])
        is_key = bool(loc) and loc[-1] == "[key]"
        if is_key:
            loc = loc[:-1]
        where, annotation, metadata, holder = _resolve(model, loc)
        if is_key:
            annotation, metadata = _key_type(_resolve(model, loc[:-1])[1])
        return cls(where, is_key, error["type"], error.get("input"), error.get("ctx") or {},
                   error["msg"], annotation, metadata,
                   _field_names(holder) if holder is not None else (), _noun(holder))

    @property
    def parent(self) -> Where:
        return self.where[:-1]

    @property
    def name(self) -> str:
        return str(self.where[-1]) if self.where else ""

    @property
    def other_fields(self) -> list[str]:
        """The fields of the model holding this one, but this one: what an unknown field may
        have been meant as."""
        return [name for name in self.fields if name != self.name]

    def problems(self, show_input: bool) -> Iterator[Problem]:
        if self.type in ("value_error", "assertion_error"):
            yield from self._raised_problems()
        elif isinstance(self.input, bool) and self.type != "extra_forbidden":
            # `no:` or `equals: yes`, meant as words
            read_as = str(self.input).lower()
            if self.is_key:  # the key's place (True is 1) says nothing
                yield Problem(self.parent, f"a key that YAML read as {read_as}: "
                              f"{YAML_BOOLEANS_HINT}")
            else:
                what = (f"expected text, got {read_as}" if self.type in _TEXTUAL
                        else self._message(show_input))
                yield Problem(self.where, f"{what}: {YAML_BOOLEANS_HINT}")
        else:  # an unknown field is a problem of the model that has it
            where = self.parent if self.type == "extra_forbidden" else self.where
            yield Problem(where, self._message(show_input))

    def _raised_problems(self) -> Iterator[Problem]:
        """What a validator raised: several problems at their places, or a message here."""
        raised = self.ctx.get("error")
        if isinstance(raised, Problems):
            for problem in raised.problems:
                yield Problem(self.where + problem.where, problem.what)
            return
        text = str(raised) if raised is not None else self.msg.removeprefix("Value error, ")
        for line in text.splitlines():  # a check that found several problems
            yield Problem(self.where, line)

    def _message(self, show_input: bool) -> str:
        kind, ctx, given = self.type, self.ctx, self.input
        if kind == "extra_forbidden":
            fields = self.other_fields
            fix = suggestion(self.name, fields, "fields", listed=MAX_LISTED) if fields else ""
            return f"unknown field {self.name!r}" + (f": {fix}" if fix else "")
        if kind == "missing":
            return f"missing: {self.noun} needs it" if self.noun else "missing: it is required"
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            return self._tag_message()
        if kind == "string_pattern_mismatch":
            return self._pattern_message(show_input)
        if kind in ("literal_error", "enum"):
            expected = ctx.get("expected", "")
            if not show_input or not isinstance(given, str):
                return f"must be {expected}"
            match = closest(given, _quoted(expected))
            return f"{given!r} is not allowed: " + (
                f"did you mean {match!r}?" if match else f"use {expected}")
        if kind in _BOUNDS:
            bound, size, rule = _BOUNDS[kind]
            limit = _number(ctx[bound])
            if show_input and _is_number(given):
                return f"{_number(given)} is too {size}: {rule} {limit}"
            return f"must be {rule} {limit}"
        if kind in ("too_short", "string_too_short"):
            least = ctx.get("min_length", 1)
            unit = "characters" if kind == "string_too_short" else "items"
            return "must not be empty" if least == 1 else f"needs at least {least} {unit}"
        if kind == "string_too_long":
            return f"is {len(given)} characters long: at most {ctx.get('max_length')}"
        if kind == "too_long":
            actual = ctx.get("actual_length")
            counted = f"has {actual} items" if actual is not None else "has too many items"
            return f"{counted}: at most {ctx.get('max_length')}"
        if kind in _EXPECTED:
            return f"expected {_EXPECTED[kind]}, got {_described(given, show_input)}"
        return self.msg  # a kind of error no flow, queue or setting has yet: pydantic's words

    def _tag_message(self) -> str:
        """A tagged union's tag (a step's `kind`) that is missing or names no member."""
        tags = _quoted(self.ctx.get("expected_tags", "")) or self._union_tags()
        field = self.ctx.get("discriminator", "'kind'").strip("'")
        if self.type == "union_tag_invalid":
            tag = str(self.ctx.get("tag"))
            return f"unknown {field} {tag!r}: {suggestion(tag, tags, f'{field}s', MAX_LISTED)}"
        if isinstance(self.input, dict):  # a misspelt `kind:` key is the likely mistake
            for key in self.input:
                if isinstance(key, str) and closest(key, [field]) == field:
                    return f"unknown field {key!r}: did you mean {field!r}?"
        return f"`{field}` is missing: one of {', '.join(sorted(tags))}"

    def _union_tags(self) -> list[str]:
        return [tag for member in _members(self.annotation)
                for tag in _discriminator_values(member)]

    def _pattern_message(self, show_input: bool) -> str:
        explained = next((m for m in self.metadata if isinstance(m, Explained)), None)
        if explained is None:
            return f"does not have the expected form ({self.ctx.get('pattern')})"
        head = f"{self.input!r} is not" if show_input else "must be"
        return f"{head} {explained.noun}: {explained.rule}"


def _misspelt_required_fields(errors: list[_Error]) -> set[tuple[Where, str]]:
    """(model, field) of each missing field that an unknown field given beside it is closest to:
    `nxt: done` for `next` is one mistake."""
    missing = {(error.parent, error.name) for error in errors if error.type == "missing"}
    misspelt = set()
    for error in errors:
        if error.type == "extra_forbidden":
            match = closest(error.name, error.other_fields)
            if match is not None and (error.parent, match) in missing:
                misspelt.add((error.parent, match))
    return misspelt


_BOUNDS = {  # error type: (the ctx key of the bound, too what, the rule)
    "greater_than": ("gt", "small", "more than"),
    "greater_than_equal": ("ge", "small", "at least"),
    "less_than": ("lt", "large", "less than"),
    "less_than_equal": ("le", "large", "at most"),
}
# Where a word was expected (`equals` takes one or a list): a boolean there was meant as a word.
_TEXTUAL = {"string_type", "literal_error", "enum", "tuple_type", "list_type"}
_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (name: value)",
    "model_type": "a mapping (name: value)",
    "model_attributes_type": "a mapping (name: value)",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "none_required": "nothing",
}


def _described(value: Any, show_input: bool) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"the number {_number(value)}" if show_input else "a number"
    if isinstance(value, str):
        return f"the text {value!r}" if show_input else "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _quoted(listing: str) -> list[str]:
    """The values in pydantic's `'a', 'b' or 'c'`."""
    return re.findall(r"'((?:[^'\\]|\\.)*)'", listing)


def _dotted(where: Where) -> str:
    return ".".join(str(part) for part in where)


# --- finding a location's type in the model -----------------------------------------------------

def _resolve(
    model: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[Where, Any, tuple[Any, ...], type[BaseModel] | None]:
    """Walk `loc` through `model`'s fields: the location without union tags, the type and
    metadata found there, and the model whose field the last part names (None: not a model's)."""
    where: list[str | int] = []
    annotation: Any = model
    metadata: tuple[Any, ...] = ()
    holder: type[BaseModel] | None = None
    for part in loc:
        annotation, metadata = _unwrapped(annotation, metadata)
        members = _members(annotation)
        if len(members) > 1:  # a tagged union: the part is the tag, which the place names
            tagged = next((m for m in members if str(part) in _discriminator_values(m)), None)
            if tagged is not None:
                annotation, metadata = _unwrapped(tagged, ())
                continue
            where.append(part)
            annotation, metadata, holder = None, (), None
            continue
        where.append(part)
        holder = None
        if _is_model(annotation):
            holder = annotation
            field = _field(annotation, str(part))
            annotation, metadata = ((field.annotation, tuple(field.metadata))
                                    if field is not None else (None, ()))
        elif get_origin(annotation) is dict:
            annotation, metadata = get_args(annotation)[1], ()
        elif get_origin(annotation) in (list, tuple, set, frozenset):
            annotation, metadata = (get_args(annotation) or (None,))[0], ()
        else:
            annotation, metadata = None, ()
    annotation, metadata = _unwrapped(annotation, metadata)
    return tuple(where), annotation, metadata, holder


def _key_type(mapping: Any) -> tuple[Any, tuple[Any, ...]]:
    mapping, _ = _unwrapped(mapping, ())
    if get_origin(mapping) is dict:
        return _unwrapped(get_args(mapping)[0], ())
    return None, ()


def _unwrapped(annotation: Any, metadata: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """The type under `Annotated` and `X | None`, with the metadata gathered on the way."""
    while True:
        if get_origin(annotation) is Annotated:
            metadata = metadata + tuple(annotation.__metadata__)
            annotation = get_args(annotation)[0]
            continue
        members = _members(annotation)
        if len(members) == 1 and members[0] is not annotation:
            annotation = members[0]
            continue
        return annotation, metadata


def _members(annotation: Any) -> list[Any]:
    """A union's members other than None; a lone type for anything else."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [member for member in get_args(annotation) if member is not type(None)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field(model: type[BaseModel], name: str) -> Any:
    for field_name, field in model.model_fields.items():
        if name in (field_name, field.alias):
            return field
    return None


def _field_names(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(field.alias or name for name, field in model.model_fields.items())


def _discriminator_values(member: Any) -> list[str]:
    member, _ = _unwrapped(member, ())
    if not _is_model(member):
        return []
    field = member.model_fields.get("kind")
    if field is None or get_origin(field.annotation) is not Literal:
        return []
    return [str(value) for value in get_args(field.annotation)]


def _noun(model: type[BaseModel] | None) -> str:
    """What a model is called in a message: `a fetch step` for a step kind."""
    kinds = _discriminator_values(model) if model is not None else []
    return f"a {kinds[0]} step" if kinds else ""
