"""What a webhook decided, told: its log line, its metrics, and its trace kept in Redis (written
in the background)."""

from __future__ import annotations

import logging

from ivr.calltrace import CallTrace
from ivr.logs import LogLine
from ivr.metrics import ROUTES, WEBHOOK_SECONDS, labelled
from ivr.services import Services

log = logging.getLogger("ivr.webhook")
# Made once: a LogRecord made per webhook was most of its line's cost (bench/README.md).
_decided = LogLine(log, logging.INFO, "%s %s from %s: %s (%.1f ms)")

_webhook_seconds = labelled(WEBHOOK_SECONDS)
_routes = labelled(ROUTES)


def report_webhook(services: Services, trace: CallTrace, summary: str, seconds: float) -> None:
    """The webhook's time, and what it decided."""
    _webhook_seconds(trace.endpoint).observe(seconds)
    report_decision(services, trace, summary, seconds)


def report_decision(services: Services, trace: CallTrace, summary: str, seconds: float) -> None:
    """What was decided: the log line, the route counted, the stored trace."""
    trace.finish(summary, seconds)
    if trace.decided:
        _routes(trace.channel, trace.flow, trace.route).inc()
    if log.isEnabledFor(logging.INFO):
        _decided.log((trace.channel, trace.sid, trace.caller, summary, trace.duration_ms),
                     trace.log_fields())
    services.traces.record(trace)
