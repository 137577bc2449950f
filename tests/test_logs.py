"""Log lines (ivr.logs): the text and JSON formats as they were, written cheaply, and the lines of
a serving process written together yet never lost: a warning at once, every line at a clean stop,
in their order. Real pipes, a real `ivr serve`."""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import logging
import os
import random
import select
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ivr.logs import (
    _TEXT_FORMAT,
    BatchedStreamHandler,
    JsonFormatter,
    LineBatch,
    LogLine,
    RecordTemplate,
    TextFormatter,
    hide_secrets,
    line_batch,
    log_context,
    mask_number,
    utc_time,
)
from tests import loyalty_api as L
from tests.conftest import Served
from tests.test_observability import eventually
from tests.test_workers import local_token
from tests.twilio_client import FakeTwilio, call_params

WEBHOOK_ARGS = ("voice", "CA" + "0" * 32, mask_number(L.GOLD),
                "flow loyalty_routing via lookup>by_tier>to_gold -> gold", 3.25)


def record(level: int = logging.INFO, exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    return logging.getLogger("ivr.webhook").makeRecord(
        "ivr.webhook", level, __file__, 1, "%s %s from %s: %s (%.1f ms)", WEBHOOK_ARGS, exc_info,
        extra=extra or None)


# --- the formats ------------------------------------------------------------------------------

def test_a_text_line_is_what_the_logging_formatter_writes() -> None:
    try:
        raise ValueError("no route")
    except ValueError:
        failed = record(logging.ERROR, exc_info=sys.exc_info())
    for each in (record(), record(logging.WARNING), failed):
        expected = logging.Formatter(_TEXT_FORMAT).format(each)
        each.exc_text = None  # cached by the formatter above
        assert TextFormatter().format(each) == expected
    assert "Traceback" in TextFormatter().format(failed)


def test_a_text_lines_time_is_the_local_time_of_its_second_with_milliseconds() -> None:
    formatter, reference = TextFormatter(), logging.Formatter(_TEXT_FORMAT)
    each = record()
    for created in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_600_000_000.25):
        each.created, each.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert formatter.formatTime(each) == reference.formatTime(each)


def test_the_json_time_is_datetimes_iso_time_in_utc_to_the_millisecond() -> None:
    times = [random.uniform(0, 4e9) for _ in range(20_000)] + [
        1_700_000_000.9995, 1_700_000_000.0004999, 1_699_999_999.9999996, 0.0]
    for created in times:
        expected = dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")
        assert utc_time(created) == expected, created


class Tier(enum.Enum):
    GOLD = "gold"


def test_a_json_line_has_the_fields_json_dumps_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getpid", lambda: 4711)
    extra = {"endpoint": "voice", "from": mask_number(L.GOLD), "flow": "loyalty_routing",
             "route": "gold", "fallback_reason": None, "duration_ms": 3.25, "ok": True,
             "at": dt.datetime(2025, 6, 2, 9, 14, tzinfo=dt.UTC), "tier": Tier.GOLD,
             "big": 2**70, "nested": {"steps": ["lookup", "to_gold"]}, "quote": 'a "b"\n\x01é'}
    each = record(**extra)
    with log_context(call_sid="CA1", channel="voice"):
        line = JsonFormatter().format(each)
    expected = {"time": utc_time(each.created), "level": "info", "logger": "ivr.webhook",
                "process": each.process, "message": each.getMessage(), "call_sid": "CA1",
                "channel": "voice", **extra}
    assert json.loads(line) == json.loads(json.dumps(expected, default=str, ensure_ascii=False))
    assert "\n" not in line


def test_a_number_in_a_json_message_is_masked_and_a_secret_in_any_field_hidden() -> None:
    hide_secrets({"IVR_SECRET_CRM": "crm-token-31415"})
    try:
        each = logging.getLogger("ivr.test").makeRecord(
            "ivr.test", logging.WARNING, __file__, 1, "lookup of %s: %s", (L.GOLD, 'said "no"'),
            None, extra={"url": "http://crm/?t=crm-token-31415"})
        line = JsonFormatter().format(each)
    finally:
        hide_secrets({})
    entry = json.loads(line)
    assert L.GOLD not in line and "crm-token-31415" not in line
    assert entry["message"] == f'lookup of {mask_number(L.GOLD)}: said "no"'
    assert entry["url"] == "http://crm/?t=[secret IVR_SECRET_CRM]"


# --- records made from a template ---------------------------------------------------------------

_TIMES = {"created", "msecs", "relativeCreated"}


def test_a_records_template_makes_what_logging_makes_with_the_callers_place() -> None:
    logger = logging.getLogger("ivr.webhook")
    template = RecordTemplate(logger, logging.INFO, "%s %s from %s: %s (%.1f ms)")
    made = []
    for number in range(3):
        args = (*WEBHOOK_ARGS[:3], f"summary {number}", float(number))
        made.append(template.record(args, {"route": f"q{number}", "flow": None}))
        expected = logger.makeRecord(logger.name, logging.INFO, __file__, 0, template.msg, args,
                                     None, "", {"route": f"q{number}", "flow": None})
        place = made[-1].lineno, made[-1].funcName
        expected.lineno, expected.funcName = place
        assert {k: v for k, v in vars(made[-1]).items() if k not in _TIMES} == {
            k: v for k, v in vars(expected).items() if k not in _TIMES}
        assert made[-1].getMessage().endswith(f"summary {number} ({number:.1f} ms)")
        assert abs(made[-1].created - expected.created) < 5
    assert place[1] == "test_a_records_template_makes_what_logging_makes_with_the_callers_place"
    assert len({record.lineno for record in made}) == 1


def test_a_record_factory_of_the_host_program_makes_the_templates_records_too() -> None:
    class Tagged(logging.LogRecord):
        pass

    template = RecordTemplate(logging.getLogger("ivr.webhook"), logging.INFO, "%s")
    template.record(("before",), {})
    logging.setLogRecordFactory(Tagged)
    try:
        assert type(template.record(("with the factory",), {})) is Tagged
    finally:
        logging.setLogRecordFactory(logging.LogRecord)


# --- the webhook's line straight to the server's handler (LogLine) ------------------------------

WEBHOOK_FIELDS = {"endpoint": "voice", "from": mask_number(L.GOLD), "flow": "loyalty_routing",
                  "route": "gold", "fallback_reason": None, "duration_ms": 3.25}


@pytest.fixture
def server_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """`ivr.test_logs.server.webhook` reaching only the server's own handler (as
    configure_logging sets it up, on `ivr.test_logs.server`), writing to a StringIO."""
    parent, logger = (logging.getLogger("ivr.test_logs.server"),
                      logging.getLogger("ivr.test_logs.server.webhook"))
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream)
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    parent.propagate = False
    yield logger, stream
    parent.handlers.clear()
    logger.handlers.clear()
    logger.filters.clear()
    logging.setLogRecordFactory(logging.LogRecord)


@pytest.mark.parametrize("formatter_class", [JsonFormatter, TextFormatter])
def test_a_line_written_straight_to_the_servers_handler_is_the_line_logging_writes(
        server_logger: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch,
        formatter_class: type[JsonFormatter | TextFormatter]) -> None:
    logger, stream = server_logger
    handler = logger.parent.handlers[0]  # type: ignore[union-attr]
    handler.setFormatter(formatter_class())
    line = LogLine(logger, logging.INFO, "%s %s from %s: %s (%.1f ms)")
    args = ("voice", "CA" + "0" * 32, L.GOLD, "with crm-token-31415 -> gold", 3.25)
    created = 1_700_000_000.4567
    monkeypatch.setattr(logging.time, "time", lambda: created)  # LogRecord's clock and ours
    hide_secrets({"IVR_SECRET_CRM": "crm-token-31415"})
    try:
        with log_context(call_sid="CA1", channel="voice"):
            fields = {**WEBHOOK_FIELDS, "route": "crm-token-31415"}  # as a field may hold
            line.log(args, fields)
            by_logging = handler.format(logger.makeRecord(
                logger.name, logging.INFO, __file__, 1, line.msg, args, None, extra=fields))
    finally:
        hide_secrets({})
    assert stream.getvalue() == by_logging + "\n"
    assert L.GOLD not in by_logging and "crm-token-31415" not in by_logging


def test_a_host_programs_handler_filter_or_record_factory_still_gets_the_record(
        server_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = server_logger
    logger.parent.handlers[0].setFormatter(JsonFormatter())  # type: ignore[union-attr]
    line = LogLine(logger, logging.INFO, "%s %s from %s: %s (%.1f ms)")
    got: list[logging.LogRecord] = []

    class Host(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    class Tagged(logging.LogRecord):
        pass

    def logged() -> logging.LogRecord:
        line.log(WEBHOOK_ARGS, WEBHOOK_FIELDS)
        return got[-1]

    logger.addHandler(Host())
    each = logged()
    assert each.getMessage() == line.msg % WEBHOOK_ARGS and each.route == "gold"
    assert each.funcName == "logged"  # where the line is logged from
    assert stream.getvalue().count("\n") == 1  # and the server's handler wrote it too
    logger.handlers.clear()
    logger.addFilter(lambda record: bool(got.append(record)) or True)
    assert logged().route == "gold"
    logger.filters.clear()
    logging.setLogRecordFactory(Tagged)
    logger.addFilter(lambda record: bool(got.append(record)) or True)
    assert type(logged()) is Tagged
    assert stream.getvalue().count("\n") == 3


# --- lines written together -------------------------------------------------------------------

@pytest.fixture
def pipe() -> Iterator[tuple[io.TextIOWrapper, Callable[[float], str]]]:
    """A real pipe: the stream to log to, and a read of what has reached it (waiting up to the
    given seconds for something)."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")

    def received(timeout: float) -> str:
        ready, _, _ = select.select([read_end], [], [], timeout)
        return os.read(read_end, 1 << 20).decode() if ready else ""

    yield stream, received
    line_batch(stream).close()
    stream.close()
    os.close(read_end)


def batched_logger(name: str, stream: io.TextIOWrapper) -> logging.Logger:
    logger = logging.getLogger(f"ivr.test_logs.{name}")
    logger.handlers.clear()
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_info_lines_of_a_serving_process_are_written_together_within_the_interval(
        pipe: tuple[io.TextIOWrapper, Callable[[float], str]]) -> None:
    stream, received = pipe
    line_batch(stream).batching = True
    logger = batched_logger("timer", stream)
    writes = 0
    original = stream.write

    def counted(text: str) -> int:
        nonlocal writes
        writes += 1
        return original(text)

    stream.write = counted  # type: ignore[method-assign]
    for number in range(50):
        logger.info("line %d from %s", number, L.GOLD)
    text = ""
    while text.count("\n") < 50:
        more = received(5.0)
        assert more, f"only {text.count(chr(10))} of 50 lines written"
        text += more
    assert [line.split(": ", 1)[1] for line in text.splitlines()] == [
        f"line {number} from {mask_number(L.GOLD)}" for number in range(50)]
    assert writes < 5  # one write for many lines


def test_a_warning_is_written_at_once_after_the_lines_before_it(
        pipe: tuple[io.TextIOWrapper, Callable[[float], str]]) -> None:
    stream, received = pipe
    batch = line_batch(stream)
    batch.interval, batch.batching = 3600.0, True  # only a warning can write them
    first, second = batched_logger("ivr_side", stream), batched_logger("uvicorn_side", stream)
    first.info("queued one")
    second.info("queued two")
    assert received(0) == ""
    first.warning("a warning")
    lines = received(0).splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["queued one", "queued two",
                                                          "a warning"]


def test_lines_are_written_as_they_come_but_while_serving_and_all_once_drained(
        pipe: tuple[io.TextIOWrapper, Callable[[float], str]]) -> None:
    stream, received = pipe
    batch = line_batch(stream)
    batch.interval = 3600.0
    logger = batched_logger("lifespan", stream)

    def said() -> list[str]:
        return [line.split(": ", 1)[1] for line in received(0).splitlines()]

    logger.info("starting")
    assert said() == ["starting"]
    with batch.batched():
        with batch.batched():  # a second app in the process, stopping first
            logger.info("serving")
            assert said() == []
        assert said() == ["serving"]
        logger.info("still serving")
        assert said() == []
    assert said() == ["still serving"]
    logger.info("stopped")
    assert said() == ["stopped"]


def test_a_line_waiting_at_a_fork_is_written_once(
        pipe: tuple[io.TextIOWrapper, Callable[[float], str]]) -> None:
    stream, received = pipe
    batch = line_batch(stream)
    batch.interval, batch.batching = 3600.0, True
    logger = batched_logger("fork", stream)
    logger.info("before the fork")
    pid = os.fork()
    if pid == 0:  # the child: its own line, written as it exits
        logger.info("the child's")
        logging.shutdown()
        os._exit(0)
    os.waitpid(pid, 0)
    batch.flush()
    text = received(5.0)
    assert text.count("before the fork") == 1 and text.count("the child's") == 1


def closed_at_once(batch: LineBatch) -> bool:
    """Whether `batch.close()` returned, and its thread ended, within 5 s."""
    closing = threading.Thread(target=batch.close, daemon=True)
    closing.start()
    closing.join(5.0)
    return not closing.is_alive() and not batch._flusher.is_alive()  # type: ignore[union-attr]


def test_closing_a_batch_writes_its_lines_and_stops_its_thread_at_once(
        pipe: tuple[io.TextIOWrapper, Callable[[float], str]]) -> None:
    stream, received = pipe
    batch = line_batch(stream)
    batch.interval, batch.batching = 0.01, True
    logger = batched_logger("close", stream)
    logger.info("written")
    assert "written" in received(5.0)  # the thread now waits for the next batch's first line
    batch.interval = 3600.0
    logger.info("waiting")
    assert received(0) == ""

    assert closed_at_once(batch)
    assert "waiting" in received(0)


def test_closing_a_batch_whose_thread_waits_for_lines_stops_it_at_once(
        pipe: tuple[io.TextIOWrapper, Callable[[float], str]]) -> None:
    stream, received = pipe
    batch = line_batch(stream)
    batch.interval, batch.batching = 0.01, True
    batched_logger("idle", stream).info("written")
    assert "written" in received(5.0)
    while batch._due:  # the thread has written its batch and waits for another
        received(0.01)
    assert closed_at_once(batch)


# --- a real server ------------------------------------------------------------------------------

def test_every_line_of_a_served_call_is_in_the_log_after_sigterm(
        newcomer_serve: Callable[..., Served]) -> None:
    """The worker logs at the default level (info) and in JSON (a file is no terminal); lines
    are written together while it serves, and all of them at its clean stop."""
    server = newcomer_serve()
    twilio = FakeTwilio(server.url, token=local_token(server))
    sids = []
    for _ in range(20):
        params = call_params(L.GOLD)
        assert twilio.post("/twilio/voice", params).status_code == 200
        sids.append(params["CallSid"])
    forged = FakeTwilio(server.url, token="f" * 32).post("/twilio/voice", call_params(L.GOLD))
    assert forged.status_code == 403
    # A warning is written at once: waited for, while the server still runs.
    eventually(lambda: "webhook refused" in server.log.read_text(), timeout=10)
    assert server.stop() == 0
    text = server.log.read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    answered = [entry["call_sid"] for entry in entries if entry["logger"] == "ivr.webhook"
                and entry["level"] == "info"]
    assert answered == sids
    assert L.GOLD not in text
    # The worker's last words, logged as it exits: written by the flush at exit.
    workers = {entry["process"] for entry in entries if entry["logger"] == "ivr.webhook"}
    assert any(entry["message"].startswith("Finished server process")
               and entry["process"] in workers for entry in entries)
