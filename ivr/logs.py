"""Logging set-up (text for people, or one JSON object per line for log pipelines), the context
every line of a webhook carries (its CallSid or MessageSid), and masking: phone numbers never reach
a log whole, and secrets not at all."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

import orjson
from jinja2.utils import htmlsafe_json_dumps

LogFormat = Literal["auto", "json", "text"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DIGITS = re.compile(r"\d")
# An E.164 number, plain or URL-encoded, that a message or traceback let through unmasked.
_UNMASKED_NUMBER = re.compile(r"(?:\+|%2[Bb])\d{6,15}")
# Lines below WARNING wait at most this long to be written together (LineBatch): under load, one
# write (a system call, and the stream's lock) for hundreds of webhooks rather than one each.
FLUSH_INTERVAL = 0.05
# Fields passed with `extra=` that orjson would write otherwise than str() (json.dumps' default
# here): passed to `default` instead.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
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
    if not _may_hold_a_number(text):
        return text
    return _UNMASKED_NUMBER.sub(lambda match: _mask_match(match.group()), text)


def _may_hold_a_number(text: str) -> bool:
    """Whether a `+` in `text` has six digits after it, or `text` has a `%`: the pattern's own
    search, with no literal to start from, tried every position (2 us a JSON line, five times
    this; bench/README.md, ivr/logs.py)."""
    if "%" in text:
        return True
    plus = text.find("+")
    while plus != -1:
        if text[plus + 1:plus + 7].isdigit():  # any digit: a few more than the pattern's
            return True
        plus = text.find("+", plus + 1)
    return False


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
    if cores is not None:
        for core in cores:
            if core in text:
                break
        else:
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
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return _scrub(super().format(record))
        # _TEXT_FORMAT, as Formatter.format writes it, without its per-line machinery.
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return _scrub(f"{record.asctime} {record.levelname} {record.name}: {record.message}")

    def line(self, created: float, levelname: str, name: str, message: str,
             fields: Mapping[str, Any]) -> str:
        """What format writes for a record of these, made without one (LogLine)."""
        asctime = self._asctime(created, _msecs(created))
        return _scrub(f"{asctime} {levelname} {name}: {message}")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Formatter's asctime, the date and time of a second made once for all its lines."""
        return self._asctime(record.created, record.msecs)

    def _asctime(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        return self.default_msec_format % (self._second_text, msecs)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, process, message, the webhook's context
    (call_sid or message_sid, channel) and the fields passed with `extra=`; `exception` holds a
    traceback. Compact (no spaces), written by orjson: json.dumps was about a quarter of a
    webhook line's cost (bench/README.md, ivr/logs.py)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _json_entry(record.created, record.levelname, record.name, record.process,
                            record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = _scrub(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = _scrub(record.stack_info)
        # Secrets last, over the whole line: a field passed with `extra=` may hold one too.
        return scrub_secrets(_json_line(entry))

    def line(self, created: float, levelname: str, name: str, message: str,
             fields: Mapping[str, Any]) -> str:
        """What format writes for a record of these, with `fields` passed as `extra=`, made
        without one (LogLine)."""
        entry = _json_entry(created, levelname, name, _process_id(), message)
        for key, value in fields.items():
            if key not in entry:
                entry[key] = value
        return scrub_secrets(_json_line(entry))


def _json_entry(created: float, levelname: str, name: str, process: int | None,
                message: str) -> dict[str, Any]:
    return {
        "time": utc_time(created),
        "level": levelname.lower(),
        "logger": name,
        "process": process,  # which worker, under `ivr serve --workers N`
        # Before JSON escapes it: the escape of a secret's escaped form is no form of it.
        "message": _scrub(message),
        **_context.get(),
    }


@functools.cache  # forgotten in a forked child (_forget_batches)
def _process_id() -> int | None:
    """A LogRecord's `process`."""
    return os.getpid() if logging.logProcesses else None


def _msecs(created: float) -> float:
    """A LogRecord's `msecs` for its `created`."""
    return int((created - int(created)) * 1000) + 0.0


def _json_line(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, default=str, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # an integer past 64 bits
        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=4)  # the current second, and the one before at its turn
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def utc_time(created: float) -> str:
    """`2025-06-02T09:14:03.412+00:00`: as datetime's isoformat(timespec="milliseconds") of
    the UTC time, with the date and time of a second made once for all its lines."""
    fraction, whole = math.modf(created)
    microseconds = round(fraction * 1e6)  # datetime.fromtimestamp's rounding (half to even)
    second = int(whole)
    if microseconds >= 1_000_000:
        second, microseconds = second + 1, microseconds - 1_000_000
    elif microseconds < 0:
        second, microseconds = second - 1, microseconds + 1_000_000
    return f"{_utc_second(second)}.{microseconds // 1000:03d}+00:00"


class RecordTemplate:
    """The LogRecord of one log call made from a template: what is the same from one line to
    the next (logger, level, message format, where it is logged from, thread, process) taken
    once from a record made as logging makes them, the time, the arguments and the `extra`
    fields set per line. logging's LogRecord() was the largest part of the webhook line's cost
    (bench/README.md, ivr/logs.py). A record factory set by the host program is used instead."""

    _PER_LINE = frozenset({"msg", "args", "created", "msecs", "relativeCreated"})

    def __init__(self, logger: logging.Logger, level: int, msg: str,
                 stacklevel: int = 1) -> None:
        """`stacklevel`: as logging's, the caller of `record` being 1."""
        self.logger, self.level, self.msg = logger, level, msg
        self.stacklevel = stacklevel
        self._base: dict[str, Any] | None = None
        self._thread = 0
        _templates.append(self)

    def record(self, args: tuple[Any, ...], fields: Mapping[str, Any]) -> logging.LogRecord:
        """This call's record, as `logger.makeRecord` with the caller's location would make it.
        Call it from the same place every time."""
        thread = threading.get_ident()
        if (self._base is None or thread != self._thread
                or logging.getLogRecordFactory() is not logging.LogRecord):
            made = self._made(args, fields)
            if logging.getLogRecordFactory() is logging.LogRecord:
                self._base = {key: value for key, value in made.__dict__.items()
                              if key not in self._PER_LINE and key not in fields}
                self._thread = thread
            return made
        made = object.__new__(logging.LogRecord)
        attributes = made.__dict__
        attributes.update(self._base)
        now = time.time()
        attributes["msg"], attributes["args"], attributes["created"] = self.msg, args, now
        attributes["msecs"] = _msecs(now)
        attributes["relativeCreated"] = (now - logging._startTime) * 1000
        if "taskName" in attributes:  # Python 3.12: which task, per line
            attributes["taskName"] = _task_name()
        attributes.update(fields)
        return made

    def _made(self, args: tuple[Any, ...], fields: Mapping[str, Any]) -> logging.LogRecord:
        pathname, lineno, func, _ = self.logger.findCaller(stacklevel=2 + self.stacklevel)
        return self.logger.makeRecord(self.logger.name, self.level, pathname, lineno, self.msg,
                                      args, None, func, dict(fields))

    def _forget(self) -> None:
        self._base = None


class LogLine:
    """One log call made on every webhook, at its cost: written straight to the server's own
    handler (BatchedStreamHandler, formatted by ours) when that is the one handler the line
    would reach, the line made from its parts with no LogRecord and no walk through logging's
    handlers (a webhook's line through logging was 12-14% of a cache hit; bench/README.md,
    ivr/logs.py). Any other set-up (a host program's handler, a filter, a record factory) gets
    the record through logging, as any line."""

    def __init__(self, logger: logging.Logger, level: int, msg: str) -> None:
        self.logger, self.level, self.msg = logger, level, msg
        self.levelname = logging.getLevelName(level)
        self._template = RecordTemplate(logger, level, msg, stacklevel=2)

    def log(self, args: tuple[Any, ...], fields: Mapping[str, Any]) -> None:
        """Log `msg % args` with `fields` as `extra=`. Call it from the same place every time."""
        if not self.logger.isEnabledFor(self.level):
            return
        handler = self._server_handler()
        if handler is not None:
            try:
                created = time.time()
                line = handler.formatter.line(  # type: ignore[union-attr]
                    created, self.levelname, self.logger.name, self.msg % args, fields)
            except Exception:  # noqa: BLE001 (logging's path tells it: handleError)
                handler = None
            else:
                line_batch(handler.stream).add(line + handler.terminator,
                                               self.level >= logging.WARNING)
                return
        self.logger.handle(self._template.record(args, fields))

    def _server_handler(self) -> BatchedStreamHandler | None:
        """The server's own handler, if it is the only one a line of this logger reaches and
        no filter or record factory of a host program would see the record."""
        found: logging.Handler | None = None
        logger: logging.Logger | None = self.logger
        while logger is not None:
            if logger.filters or (logger.handlers and (found or len(logger.handlers) > 1)):
                return None
            if logger.handlers:
                found = logger.handlers[0]
            if not logger.propagate:
                break
            logger = logger.parent
        if (type(found) is not BatchedStreamHandler or found.filters
                or self.level < found.level
                or type(found.formatter) not in (JsonFormatter, TextFormatter)
                or logging.getLogRecordFactory() is not logging.LogRecord):
            return None
        return found


def _task_name() -> str | None:
    import asyncio
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return None if task is None else task.get_name()


_templates: list[RecordTemplate] = []


def resolved_format(log_format: LogFormat) -> Literal["json", "text"]:
    """`auto`: text at a terminal, JSON otherwise (a service manager, a container, a file)."""
    if log_format == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return log_format


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if resolved_format(log_format) == "json" else TextFormatter()


class LineBatch:
    """The lines bound for one stream, written together. While `batching` (an app serving:
    `batched`, in ivr.app's lifespan), a line below WARNING waits up to `interval` for others, a
    thread then writing them all at once; a warning or an error is written at once, with every
    line before it. Otherwise every line is written as it comes: at start-up and after a drain,
    in order with what a process prints to stderr itself, and before uvicorn ends a worker that
    SIGTERM stopped by raising the signal again (no exit handler runs then). Lines are also
    written at a clean exit (logging.shutdown flushes every handler) and before a fork; a
    process killed outright loses at most `interval` of them."""

    def __init__(self, stream: TextIO, interval: float = FLUSH_INTERVAL) -> None:
        self.stream = stream
        self.interval = interval
        self.batching = False
        self._serving = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()  # the lines, and whether a write is due
        self._writing = threading.Lock()  # the stream, so batches are written in their order
        self._flusher: threading.Thread | None = None
        self._start_signals()

    def _start_signals(self) -> None:
        # Raw locks as signals, not Events: a line that starts a batch releases one (a C call),
        # where an Event's set ran threading's Condition in Python and woke the thread per line
        # in the harness (bench/README.md, ivr/logs.py).
        self._due = False  # a write is due: the flusher is timing a batch
        self._closed = False
        self._wake = threading.Lock()  # released when a batch starts (or at close)
        self._wake.acquire()
        self._stop = threading.Lock()  # released at close: ends the flusher's wait
        self._stop.acquire()

    def add(self, line: str, urgent: bool) -> None:
        with self._lock:
            self._lines.append(line)
            timed = self.batching and not urgent and not self._due
            if timed:
                self._due = True
        if urgent or not self.batching:
            self.flush()
        elif timed:
            if self._flusher is None:
                self._start_flusher()
            self._wake.release()

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                lines, self._lines = self._lines, []
            if lines:
                self.stream.write("".join(lines))
                self.stream.flush()

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Lines written together inside the block (nested: until the outermost ends), and
        all of them at its end."""
        with self._lock:
            self._serving += 1
            self.batching = True
        try:
            yield
        finally:
            with self._lock:
                self._serving -= 1
                self.batching = self._serving > 0
            self.flush()

    def close(self) -> None:
        """Write what waits, and stop the thread (batching off from now on)."""
        self.batching = False
        with self._lock:
            closing, self._closed = not self._closed, True
            if closing:
                self._stop.release()
                if not self._due:  # the flusher waits for a batch: wake it to see the stop
                    self._due = True
                    self._wake.release()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_when_due, daemon=True,
                                             name="ivr-log-lines")
        self._flusher.start()

    def _flush_when_due(self) -> None:
        while True:
            self._wake.acquire()
            # What comes meanwhile goes in the same write.
            closed = self._stop.acquire(timeout=self.interval)
            with self._lock:
                self._due = False
            with contextlib.suppress(Exception):  # a closed stream: as logging, carry on
                self.flush()
            if closed:
                return

    def _forked(self) -> None:
        """In a forked child: the parent writes the lines it had (flushed before the fork), and
        the flusher thread did not come along."""
        self._lines = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._flusher = None
        self._start_signals()


_batches: dict[int, LineBatch] = {}


def line_batch(stream: TextIO) -> LineBatch:
    """The one LineBatch of `stream`, shared by every handler writing to it, so that lines stay
    in their order (ivr's and uvicorn's)."""
    batch = _batches.get(id(stream))
    if batch is None or batch.stream is not stream:
        batch = _batches[id(stream)] = LineBatch(stream)
    return batch


def _flush_batches() -> None:
    for batch in list(_batches.values()):
        with contextlib.suppress(Exception):
            batch.flush()


def _forget_batches() -> None:
    for batch in _batches.values():
        batch._forked()
    for template in _templates:  # another process id
        template._forget()
    _process_id.cache_clear()


os.register_at_fork(before=_flush_batches, after_in_child=_forget_batches)


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler writing through its stream's LineBatch: lines below WARNING together,
    off the request's path, while the process serves."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            line_batch(self.stream).add(line, record.levelno >= logging.WARNING)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 (as StreamHandler: a line is never a caller's failure)
            self.handleError(record)

    def flush(self) -> None:
        line_batch(self.stream).flush()


def batched_lines() -> contextlib.AbstractContextManager[None]:
    """While an app serves: lines below WARNING to stderr written together (LineBatch), and all
    of them once it has drained."""
    return line_batch(sys.stderr).batched()


def configure_logging(level: str, log_format: LogFormat = "text",
                      secrets: Mapping[str, str] | None = None) -> None:
    """Send `ivr.*` logs to stderr at `level`, once per process (workers call it too), unless
    the host program has configured logging itself; `secrets` (name -> value) are never shown
    (see hide_secrets)."""
    hide_secrets(secrets or {})
    logger = logging.getLogger("ivr")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = BatchedStreamHandler(sys.stderr)
        handler.setFormatter(formatter(log_format))
        logger.addHandler(handler)


def uvicorn_log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """uvicorn's own lines (started, stopped, errors) in the same format as ours, in order with
    ours."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ivr": {"()": f"{__name__}.{type(formatter(log_format)).__name__}"}},
        "handlers": {"stderr": {"class": f"{__name__}.BatchedStreamHandler", "formatter": "ivr",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(),
                               "propagate": False},
        },
    }
