"""Logging set-up (text for people, or one JSON object per line for log pipelines), the context
every line of a webhook carries (its CallSid or MessageSid), and masking: phone numbers never reach
a log whole, and secrets not at all."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from jinja2.utils import htmlsafe_json_dumps

LogFormat = Literal["auto", "json", "text"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DIGITS = re.compile(r"\d")
# An E.164 number, plain or URL-encoded, that a message or traceback let through unmasked.
_UNMASKED_NUMBER = re.compile(r"(?:\+|%2B)\d{6,15}", re.IGNORECASE)
# What a LogRecord carries by itself; anything else was passed with `extra=` and is a field
# (but for uvicorn's copy of its message with terminal colours).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message"}

# The characters a request target keeps as they are (ivr.flows.http): printable ASCII but space.
_URL_TARGET_SAFE = "".join(map(chr, range(0x21, 0x7F)))
# (every form of every secret's value, longest first, as one pattern; form -> `[secret NAME]`),
# replaced whole by hide_secrets; None: no secret to hide.
_secrets: tuple[re.Pattern[str], dict[str, str], tuple[str, ...] | None] | None = None

# Never mutated, only replaced (by log_context), so one shared empty default is safe.
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "ivr_log_context", default={})


@functools.lru_cache(maxsize=4096)  # every webhook masks its caller: a caller calls again
def mask_number(address: str) -> str:
    """`whatsapp:+15551234567` -> `whatsapp:+1*******567`: enough to tell callers apart in a log."""
    prefix, _, number = address.rpartition(":")
    digits = len(_DIGITS.findall(number))
    if digits <= 4:
        return address if not digits else prefix + (":" if prefix else "") + "*" * len(number)
    seen = 0
    masked = []
    for char in number:
        if char.isdigit():
            seen += 1
            masked.append(char if seen <= 1 or seen > digits - 3 else "*")
        else:
            masked.append(char)
    return prefix + (":" if prefix else "") + "".join(masked)


def scrub_numbers(text: str) -> str:
    """Mask any whole phone number left in `text` (an exception's message, a URL in a traceback)."""
    if "+" not in text and "%" not in text:
        return text
    return _UNMASKED_NUMBER.sub(lambda match: _mask_match(match.group()), text)


def _mask_match(found: str) -> str:
    if found[0] == "+":
        return mask_number(found)
    return found[:3] + mask_number(found[3:])  # %2B15551234567 -> %2B1*******567


def hide_secrets(secrets: Mapping[str, str]) -> None:
    """From now on, every log line of the process shows `[secret NAME]` where it would show a
    secret's value: as given, URL-encoded (as a flow's `urlencode`, a query string or the HTTP
    client writes it), escaped in JSON (json.dumps, a flow's `tojson`) or in Python's repr."""
    global _secrets
    forms: dict[str, str] = {}
    for name, value in secrets.items():
        for form in (value, quote(value, safe=""), quote(value),
                     quote(value, safe=_URL_TARGET_SAFE), quote_plus(value),
                     json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
                     htmlsafe_json_dumps(value)[1:-1],  # a flow's `tojson`
                     repr(value)[1:-1]):  # an exception's message quotes it so
            if form:
                forms.setdefault(form, f"[secret {name}]")
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    # Letters and digits are written alike in every form: the longest run of them is in every
    # form of its secret, and a line that holds no such run needs no search for the forms (a
    # substring test is much cheaper than the search, on every log line: bench/README.md).
    cores = tuple(max(re.findall(r"[A-Za-z0-9]+", value), key=len, default="")
                  for value in secrets.values() if value)
    _secrets = ((re.compile(pattern), forms, cores if all(cores) else None) if forms
                else None)


def scrub_secrets(text: str) -> str:
    """`text` with every secret hide_secrets was given replaced by `[secret NAME]`."""
    hidden = _secrets
    if hidden is None:
        return text
    pattern, names, cores = hidden
    if cores is not None and not any(core in text for core in cores):
        return text
    return pattern.sub(lambda match: names[match.group()], text)


def _scrub(text: str) -> str:
    # Secrets first: a number masked inside one would no longer be found.
    return scrub_numbers(scrub_secrets(text))


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block (in this task) carries `fields`, e.g. the CallSid."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class TextFormatter(logging.Formatter):
    """`2025-01-01 12:00:00,000 INFO ivr.webhook: voice CA… from +1*******567: …`"""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, process, message, the webhook's context
    (call_sid or message_sid, channel) and the fields passed with `extra=`; `exception` holds a
    traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.process,  # which worker, under `ivr serve --workers N`
            "message": _scrub(record.getMessage()),
            **_context.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = _scrub(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = _scrub(record.stack_info)
        # Secrets last, over the whole line: a field passed with `extra=` may hold one too.
        return scrub_secrets(json.dumps(entry, default=str, ensure_ascii=False))


def resolved_format(log_format: LogFormat) -> Literal["json", "text"]:
    """`auto`: text at a terminal, JSON otherwise (a service manager, a container, a file)."""
    if log_format == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return log_format


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if resolved_format(log_format) == "json" else TextFormatter()


def configure_logging(level: str, log_format: LogFormat = "text",
                      secrets: Mapping[str, str] | None = None) -> None:
    """Send `ivr.*` logs to stderr at `level`, once per process (workers call it too), unless
    the host program has configured logging itself; `secrets` (name -> value) are never shown
    (see hide_secrets)."""
    hide_secrets(secrets or {})
    logger = logging.getLogger("ivr")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(log_format))
        logger.addHandler(handler)


def uvicorn_log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """uvicorn's own lines (started, stopped, errors) in the same format as ours."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ivr": {"()": f"{__name__}.{type(formatter(log_format)).__name__}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "ivr",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(),
                               "propagate": False},
        },
    }
