"""Templates and conditions in flows: Jinja2's sandbox, compiled once when a flow loads.

A field typed `Template` or `Condition` holds the compiled form next to its source, so a flow
that loads can never fail later on a syntax error, and a run never parses text.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.ChainableUndefined,  # `vars.tier` on a caller with no tier is just empty
    autoescape=False,  # output goes through twilio's TwiML builders, which escape it
    trim_blocks=True,
    lstrip_blocks=True,
)


def _urlencode(value: Any) -> str:
    """Jinja's own filter keeps `/`, so `From=sip:x/../admin` could walk out of a URL path:
    a value placed in a URL is quoted whole."""
    if isinstance(value, dict):
        return urlencode(value)
    return quote(str(value), safe="")


_ENV.filters["urlencode"] = _urlencode
MAX_SOURCE_LENGTH = 4000


class _Compiled:
    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.source == self.source  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.source)

    @classmethod
    def _validate(cls, value: Any) -> _Compiled:
        if isinstance(value, cls):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("must be a string")
        text = str(value)
        if len(text) > MAX_SOURCE_LENGTH:
            raise ValueError(f"is longer than {MAX_SOURCE_LENGTH} characters")
        try:
            return cls(text)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"invalid {cls.__name__.lower()} {text!r}: {exc.message}") from None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.source),
        )


class Template(_Compiled):
    """Text with `{{ ... }}` placeholders, rendered against a run's variables."""

    __slots__ = ("_template",)

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self._template = _ENV.from_string(source)

    def render(self, variables: dict[str, Any]) -> str:
        return self._template.render(variables)


class Expression(_Compiled):
    """A Jinja2 expression such as `vars.tier`, evaluated to a value (None when undefined)."""

    __slots__ = ("_expression",)

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self._expression = _ENV.compile_expression(source, undefined_to_none=True)

    def evaluate(self, variables: dict[str, Any]) -> Any:
        return self._expression(**variables)


class Condition(Expression):
    """An expression such as `contact.channel == 'voice'`, read as true or false."""

    __slots__ = ()

    def evaluate(self, variables: dict[str, Any]) -> bool:
        return bool(super().evaluate(variables))

