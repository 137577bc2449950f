"""Reading YAML config safely: `safe_load`, a duplicate key is an error, not a silent overwrite,
and a syntax error is told in plain words at its line and column."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # `text: {{ x }}`: a mapping as a key (PyYAML would say so later)
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key",
                    key_node.start_mark) from None
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at {_position(first)}): keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


class YamlFileError(Exception):
    """The file cannot be read or parsed; `problem` says why (and where in the file), the
    message names the file too."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# A flow or the queues file is kilobytes: a file this large is a mistake (a log pasted in), and
# parsing it would take seconds at every start.
MAX_YAML_BYTES = 1024 * 1024


def read_yaml(path: Path) -> Any:
    try:
        _check_size(path.stat().st_size, path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlFileError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlFileError(path, f"cannot read: {exc}") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, where: Path | str) -> Any:
    """The YAML document in `text` (the file `where`, as errors name it)."""
    _check_size(len(text.encode("utf-8")), where)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise YamlFileError(where, describe_yaml_error(exc, text)) from None


def _check_size(size: int, where: Path | str) -> None:
    if size > MAX_YAML_BYTES:
        raise YamlFileError(where, f"{size:,} bytes, over the {MAX_YAML_BYTES:,} a config "
                            "file may have")


def describe_yaml_error(exc: yaml.YAMLError, text: str) -> str:
    """`line 12, column 5: <what is wrong, and the fix>`, for what PyYAML refused."""
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _line_and_column(text, exc.position)
        return (f"line {line}, column {column}: the control character U+{exc.character:04X} is "
                "not allowed in YAML; remove it")
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"invalid YAML: {exc}"
    problem, context = exc.problem or "", exc.context or ""
    for rule in _PLAIN:
        match = re.fullmatch(rule.problem, problem)
        if match is not None and rule.context in context:
            mark = exc.context_mark if rule.at_context and exc.context_mark else exc.problem_mark
            return f"{_position(mark)}: {rule.words(match, exc)}"
    where = f" ({context} at {_position(exc.context_mark)})" if exc.context_mark else ""
    return f"{_position(exc.problem_mark)}: invalid YAML: {problem}{where}"


def _position(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def _line_and_column(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _opened_at(exc: yaml.MarkedYAMLError) -> str:
    return _position(exc.context_mark)


class _Rule(NamedTuple):
    """What to say for a PyYAML problem (a regular expression) whose context holds `context`;
    told at the context's mark (where a quote or key began) rather than the problem's if
    `at_context`."""

    problem: str
    context: str
    words: Callable[[re.Match[str], yaml.MarkedYAMLError], str]
    at_context: bool = False


QUOTE_IT = "put the whole value in quotes"

# The mistakes a person makes in a flow or queues file.
_PLAIN = [
    _Rule(r"found character '\\t' that cannot start any token", "",
          lambda m, e: "a tab character is not allowed for indentation; use spaces"),
    _Rule(r"found character '(.+)' that cannot start any token", "",
          lambda m, e: f"a value cannot start with {m[1]!r}: {QUOTE_IT}"),
    _Rule(r"mapping values are not allowed here", "",
          lambda m, e: "a ':' YAML cannot read here: line this key up with the keys above it "
          f"(bad indentation), or, if the value holds ': ', {QUOTE_IT}"),
    _Rule(r"could not find expected ':'", "simple key",
          lambda m, e: "this line is not 'key: value' (no ':' after a key): add the ':', or "
          "indent the line if it continues the value above", at_context=True),
    _Rule(r"expected <block end>, but found '<scalar>'", "",
          lambda m, e: "more text after a complete value (one that started with a quote, '{' "
          f"or '['): {QUOTE_IT}"),
    _Rule(r"expected <block end>, but found '-'", "block mapping",
          lambda m, e: "a list item ('-') among the keys of a mapping: indent it under its key"),
    _Rule(r"expected <block end>, but found .*", "block",
          lambda m, e: "bad indentation: this line lines up with no key or list item above it "
          "(the keys of one mapping start in one column)"),
    _Rule(r"(sequence entries|mapping keys) are not allowed here", "",
          lambda m, e: "bad indentation: a list item ('-') or key where a value goes; indent "
          "it under its key"),
    _Rule(r"invalid indentation or unclosed '\[' or '\{'", "",
          lambda m, e: "bad indentation, or a '[' or '{' that is never closed"),
    _Rule(r"expected ',' or '\]', but got .*", "",
          lambda m, e: f"the list opened with '[' at {_opened_at(e)} needs ',' between its "
          "items and ']' at its end"),
    _Rule(r"expected ',' or '\}', but got .*", "",
          lambda m, e: f"the mapping opened with '{{' at {_opened_at(e)} needs ',' between its "
          "entries and '}' at its end"),
    _Rule(r"expected the node content, but found '<stream end>'", "",
          lambda m, e: "the file ends where a value should be: close every '[' and '{'"),
    _Rule(r"expected the node content, but found '(.*)'", "",
          lambda m, e: f"a value should be here, not {m[1]!r}"),
    _Rule(r"found unexpected (end of stream|document separator)", "quoted scalar",
          lambda m, e: "this quote is never closed: close it", at_context=True),
    _Rule(r"found unknown escape character '(.*)'", "",
          lambda m, e: f"'\\{m[1]}' is not an escape in double quotes: write '\\\\{m[1]}', or "
          "use single quotes"),
    _Rule(r"found undefined alias '(.*)'", "",
          lambda m, e: f"'*{m[1]}' names no anchor ('&{m[1]}'): a value that starts with '*' "
          "needs quotes"),
    _Rule(r"expected alphabetic or numeric character, but found .*", "an a",
          lambda m, e: f"a value cannot start with '&' or '*': {QUOTE_IT}"),
    _Rule(r"could not determine a constructor for the tag '(.*)'", "",
          lambda m, e: f"unknown tag {m[1]!r}: a value that starts with '!' needs quotes"),
    _Rule(r"found unhashable key", "",
          lambda m, e: "a value that starts with '{' is read as a mapping: a template needs "
          'quotes, e.g. "{{ contact.number }}"'),
    _Rule(r"duplicate key .*", "", lambda m, e: m[0]),
    _Rule(r"but found another document", "",
          lambda m, e: "a second document (after '---'): the file holds one"),
]
