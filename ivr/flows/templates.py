"""Templates and conditions in flows: Jinja2's sandbox, compiled once when a flow loads.

A field typed `Template` or `Condition` holds the compiled form next to its source, so a flow
that loads can never fail later on a syntax error, and a run never parses text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import jinja2
from jinja2 import meta, nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema


def _text(value: Any) -> Any:
    """What a placeholder writes: nothing for None (a fetch's null or missing field, a status
    that never came), as for a variable never set; a caller must not hear "None"."""
    return "" if value is None else value


_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.ChainableUndefined,  # `vars.tier` on a caller with no tier is just empty
    autoescape=False,  # output goes through twilio's TwiML builders, which escape it
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_text,
)


def _urlencode(value: Any) -> str:
    """Jinja's own filter keeps `/`, so `From=sip:x/../admin` could walk out of a URL path:
    a value placed in a URL is quoted whole."""
    if isinstance(value, dict):
        return urlencode(value)
    return _quote(_str(value))


def _str(value: Any) -> str:
    """A placeholder's text on the direct path, as Jinja's finalize writes it."""
    return str(_text(value))


@functools.lru_cache(maxsize=4096)  # the caller's number in a lookup's URL, call after call
def _quote(text: str) -> str:
    return quote(text, safe="")


_ENV.filters["urlencode"] = _urlencode
MAX_SOURCE_LENGTH = 4000
# What flows read as `secrets.<name>` (IVR_SECRET_<NAME>), and `settings.*`: the same for every
# call of a server.
SECRETS = "secrets"
SETTINGS = "settings"
# Every name a flow's templates can read: a run's variables (`Run.variables`). Anything else is a
# misspelling, which Jinja would render as nothing (`parms.Body` for `params.Body`).
READABLE = frozenset({"contact", "params", "vars", "steps", SETTINGS, SECRETS})
N = TypeVar("N", bound=nodes.Node)
# What `.name` reads on a dict before any key of that name (`vars.items` is the method).
_DICT_ATTRIBUTES = frozenset(dir(dict))


class Compiled:
    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.source == self.source  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.source)

    def reads_beyond(self, name: str, attributes: frozenset[str]) -> bool:
        """Whether the source reads the variable `name` other than as `name.<attribute>` for
        one of `attributes`: `contact.number` does not read the contact's memory,
        `contact.is_returning` or `contact` alone does."""
        tree = self._tree()
        allowed = {id(node.node) for node in _find_all(tree, nodes.Getattr)
                   if isinstance(node.node, nodes.Name) and node.attr in attributes}
        return any(node.name == name and id(node) not in allowed
                   for node in _find_all(tree, nodes.Name))

    def secrets_read(self) -> frozenset[str]:
        """The secrets the source names, as `secrets.crm_token` or `secrets['crm_token']`.

        Raises ValueError when it reaches `secrets` any other way (whole, by a computed name,
        or assigned to): which secrets that reads, and where they go, no check could tell."""
        found = set()
        for node, path in _named_paths(self._tree(), SECRETS):
            if node.ctx != "load" or not path:
                raise ValueError("read a secret by its name, as secrets.crm_token")
            found.add(path[0])
        return frozenset(found)

    def paths_read(self, name: str) -> list[tuple[str, ...]]:
        """Each read of the variable `name`, as the names that follow it: `steps.lookup.status`
        is ('lookup', 'status'), `vars['tier']` ('tier',), and `vars` read whole, by a computed
        name (`vars[x]`) or through a method (`vars.get('x')`) is ()."""
        return [path for node, path in _named_paths(self._tree(), name) if node.ctx == "load"]

    def variables(self) -> frozenset[str]:
        """The run's variables the source reads (`contact`, `settings`...), by name: neither
        Jinja's own globals (`range`) nor the names it sets itself (`{% set x = ... %}`)."""
        tree = self._tree()
        if not isinstance(tree, nodes.Template):  # an expression: a template that prints it
            tree = nodes.Template([nodes.Output([tree])])
            tree.set_environment(_ENV)
        return frozenset(meta.find_undeclared_variables(tree) - _ENV.globals.keys())

    def _tree(self) -> nodes.Node:
        raise NotImplementedError

    @classmethod
    def _validate(cls, value: Any) -> Compiled:
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


def _find_all(tree: nodes.Node, kind: type[N]) -> list[N]:
    """The nodes of `kind` in `tree`, the root included."""
    return [*([tree] if isinstance(tree, kind) else []), *tree.find_all(kind)]


def _named_paths(tree: nodes.Node, name: str) -> list[tuple[nodes.Name, tuple[str, ...]]]:
    """Each `name` in `tree` with the names it is followed by (`.attr` or `['key']`), up to the
    first that is computed or is a method of a dict (which Jinja reads before a key)."""
    lookups: dict[int, nodes.Getattr | nodes.Getitem] = {}  # a node -> the lookup on it
    for node in [*_find_all(tree, nodes.Getattr), *_find_all(tree, nodes.Getitem)]:
        lookups[id(node.node)] = node
    found = []
    for node in _find_all(tree, nodes.Name):
        if node.name != name:
            continue
        path: list[str] = []
        lookup = lookups.get(id(node))
        while lookup is not None:
            key = lookup.attr if isinstance(lookup, nodes.Getattr) else (
                lookup.arg.value if isinstance(lookup.arg, nodes.Const) else None)
            if not isinstance(key, str) or (isinstance(lookup, nodes.Getattr)
                                            and key in _DICT_ATTRIBUTES):
                break
            path.append(key)
            lookup = lookups.get(id(lookup))
        found.append((node, tuple(path)))
    return found


# A variable read by a template: its name, the attributes followed, and a filter applied.
_Path = tuple[str, tuple[str, ...], Callable[[Any], str]]


def _path(node: nodes.Node) -> tuple[str, tuple[str, ...]] | None:
    """`name.attr.attr` as (name, attrs); None for anything else."""
    attributes: list[str] = []
    while isinstance(node, nodes.Getattr):
        attributes.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name) or node.ctx != "load":
        return None
    return node.name, tuple(reversed(attributes))


def _read(variables: dict[str, Any], name: str, attributes: tuple[str, ...]) -> Any:
    """What Jinja's generated code reads for `name.attr...`: the same sandboxed lookups."""
    if name in variables:
        value = variables[name]
    elif name in _ENV.globals:
        value = _ENV.globals[name]
    else:
        value = _ENV.undefined(name=name)
    for attribute in attributes:
        if type(value) is dict and attribute not in _DICT_ATTRIBUTES:
            # What the sandbox's getattr comes to for a dict, without its AttributeError.
            value = value[attribute] if attribute in value else _ENV.undefined(
                obj=value, name=attribute)
        else:
            value = _ENV.getattr(value, attribute)
    return value


def _direct_plan(tree: nodes.Template) -> list[str | _Path] | None:
    """Text and `{{ a.b }}` / `{{ a.b | urlencode }}` only: the pieces to join. Most templates in
    flows are that (a URL, a header, a note), and joining them costs far less than Jinja's
    render, which sets up a context for every call (bench/README.md, *Why the code is written
    as it is*). None: the template needs Jinja."""
    if len(tree.body) > 1 or (tree.body and not isinstance(tree.body[0], nodes.Output)):
        return None
    plan: list[str | _Path] = []
    for node in tree.body[0].nodes if tree.body else []:
        convert: Callable[[Any], str] = _str
        if isinstance(node, nodes.TemplateData):
            plan.append(node.data)
            continue
        if (isinstance(node, nodes.Filter) and node.name == "urlencode" and not node.args
                and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None):
            convert, node = _urlencode, node.node
        path = _path(node)
        if path is None:
            return None
        plan.append((*path, convert))
    return plan


_PURE_FILTERS = frozenset({"urlencode", "lower", "upper", "trim", "title", "capitalize",
                           "default", "d", "replace", "string", "int", "float", "length"})


def _settings_only(tree: nodes.Template) -> bool:
    """Whether the template reads nothing but `settings` and `secrets`, with no call and no
    filter that could answer differently twice (`random`): its text is then the same for every
    call."""
    names = _find_all(tree, nodes.Name)
    return (all(name.name in (SETTINGS, SECRETS) and name.ctx == "load" for name in names)
            and not _find_all(tree, nodes.Call)
            and all(f.name in _PURE_FILTERS for f in _find_all(tree, nodes.Filter)))


class Template(Compiled):
    """Text with `{{ ... }}` placeholders, rendered against a run's variables."""

    __slots__ = ("_template", "_plan", "_settings_only", "_rendered")

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self._template = _ENV.from_string(source)
        tree = _ENV.parse(source)
        self._plan = _direct_plan(tree)
        self._settings_only = _settings_only(tree)
        # (settings, secrets, text): what the template rendered for the settings and secrets it
        # last saw. A server's are one dict each for its whole life, so a header such as
        # Authorization is rendered once.
        self._rendered: tuple[Any, Any, str] | None = None

    def render(self, variables: dict[str, Any]) -> str:
        if not self._settings_only:
            return self._render(variables)
        settings, secrets = variables.get(SETTINGS), variables.get(SECRETS)
        rendered = self._rendered
        if rendered is None or rendered[0] is not settings or rendered[1] is not secrets:
            rendered = self._rendered = (settings, secrets, self._render(variables))
        return rendered[2]

    def _render(self, variables: dict[str, Any]) -> str:
        if self._plan is None:
            return self._template.render(variables)
        return "".join(piece if isinstance(piece, str)
                       else piece[2](_read(variables, piece[0], piece[1]))
                       for piece in self._plan)

    def _tree(self) -> nodes.Node:
        return _ENV.parse(self.source)


class Expression(Compiled):
    """A Jinja2 expression such as `vars.tier`, evaluated to a value (None when undefined)."""

    __slots__ = ("_expression", "_path")

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self._expression = _ENV.compile_expression(source, undefined_to_none=True)
        # `vars.tier` and the like, read directly (as Template does): no Jinja context.
        self._path = _path(self._tree())

    def evaluate(self, variables: dict[str, Any]) -> Any:
        if self._path is None:
            return self._expression(**variables)
        value = _read(variables, *self._path)
        return None if isinstance(value, jinja2.Undefined) else value

    def _tree(self) -> nodes.Node:
        return Parser(_ENV, self.source, state="variable").parse_expression()


class Condition(Expression):
    """An expression such as `contact.channel == 'voice'`, read as true or false."""

    __slots__ = ()

    def evaluate(self, variables: dict[str, Any]) -> bool:
        return bool(super().evaluate(variables))

