"""Logging set-up (text for people, or one JSON object per line for log pipelines), the context
every line of a webhook carries (its CallSid or MessageSid), and masking: phone numbers never reach
a log whole."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["auto", "json", "text"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DIGITS = re.compile(r"\d")
# An E.164 number, plain or URL-encoded, that a message or traceback let through unmasked.
_UNMASKED_NUMBER = re.compile(r"(?:\+|%2B)\d{6,15}", re.IGNORECASE)
# What a LogRecord carries by itself; anything else was passed with `extra=` and is a field
# (but for uvicorn's copy of its message with terminal colours).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message"}

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
        return scrub_numbers(super().format(record))


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
            "message": scrub_numbers(record.getMessage()),
            **_context.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = scrub_numbers(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = scrub_numbers(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def resolved_format(log_format: LogFormat) -> Literal["json", "text"]:
    """`auto`: text at a terminal, JSON otherwise (a service manager, a container, a file)."""
    if log_format == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return log_format


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if resolved_format(log_format) == "json" else TextFormatter()


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Send `ivr.*` logs to stderr at `level`, once per process (workers call it too), unless
    the host program has configured logging itself."""
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
