"""Prometheus metrics of the hot path. Every metric is defined here, once, by name.

Under `ivr serve` every worker records into files under PROMETHEUS_MULTIPROC_DIR (set by `ivr serve`
before the workers start: prometheus_client reads it when it is imported), and `exposition()` sums
them, so any worker answers /metrics for all of them, the workers a reload replaced included. A
gauge is a `live` one: a worker that stopped takes its value with it (`process_exited`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Literal, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from ivr.flows.model import Flow

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chose its storage (files or memory) from the environment at import: follow it.
MULTIPROCESS_DIR = os.environ.get(MULTIPROCESS_ENV)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Webhook latency buckets: what a caller on hold could ever notice, up to Twilio's 15 s limit.
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)

WEBHOOK_SECONDS = Histogram(
    "ivr_webhook_seconds", "Time to answer a Twilio webhook", ["endpoint"],
    buckets=_LATENCY_BUCKETS)
ROUTES = Counter("ivr_routes_total", "Contacts routed to a queue", ["channel", "flow", "queue"])
SIGNATURE_REJECTIONS = Counter(
    "ivr_signature_rejections_total", "Webhooks refused for a missing or wrong signature",
    ["endpoint"])
FETCH_SECONDS = Histogram(
    "ivr_fetch_seconds", "Time of flow HTTP requests (cache misses)", ["upstream"],
    buckets=_LATENCY_BUCKETS)
FETCHES = Counter(
    "ivr_fetches_total", "Flow HTTP requests by outcome (ok, http_error, timeout, "
    "connection_error, invalid_json, too_large, bad_url, no_time, breaker_open)",
    ["upstream", "outcome"])
FETCH_CACHE = Counter(
    "ivr_fetch_cache_total", "Cached fetches: hit, stale (served while refreshing), miss, "
    "coalesced (joined a request already in flight)", ["upstream", "result"])
BREAKER_STATE = Gauge(
    "ivr_breaker_state", "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open",
    ["upstream"], multiprocess_mode="livemax")
STORE_UP = Gauge(
    "ivr_store_up", "1 while this process reaches Redis (queue updates live), 0 during an outage",
    multiprocess_mode="livemin")
FLOW_VERSION = Gauge(
    "ivr_flow_version", "The published flows version this process serves (0: none yet)",
    multiprocess_mode="liveall")
CALL_TRACES_DROPPED = Counter(
    "ivr_call_traces_dropped_total", "Call traces not stored (Redis unreachable or too slow)")
STATE_WRITES_LOST = Counter(
    "ivr_state_writes_lost_total", "State writes Redis did not take, not written again, by kind: "
    "session, retry_record, held_decision, contact (memory over the kept bound, or unwritten "
    "when the process stopped)", ["kind"])
STATE_WRITES_RETRIED = Counter(
    "ivr_state_writes_retried_total", "State writes Redis did not take, written again once it "
    "answered, by kind: contact (one a contact, its writes merged)", ["kind"])

# What goes wrong inside flows: counted only when it does, so a call that routes pays nothing.
FLOW_ERRORS = Counter(
    "ivr_flow_errors_total", "Flow steps that raised (the contact went to the fallback queue)",
    ["flow", "step"])
FALLBACKS = Counter(
    "ivr_fallbacks_total", "Contacts sent to their flow's fallback queue (or an apology if it has "
    "none), by reason: deadline, error, redis, missing_version", ["channel", "flow", "reason"])
# The step label of an error where the flow has no such step (a session that names a step its
# flow no longer has): step ids start with a letter, so it cannot be one.
NOT_A_STEP = "(not a step)"

# Why a contact went to its flow's fallback: a fixed set, so the series stay few.
FallbackReason = Literal["deadline", "error", "redis", "missing_version"]
# The decision deadline passed (or a held call's decision did not come within it).
FALLBACK_DEADLINE: FallbackReason = "deadline"
# A step raised, or answering the webhook failed before or after the flow.
FALLBACK_ERROR: FallbackReason = "error"
# No session store where a question needed one (or to ask for a held call's decision).
FALLBACK_REDIS: FallbackReason = "redis"
# The flow version a session is pinned to can no longer be found.
FALLBACK_MISSING_VERSION: FallbackReason = "missing_version"
FALLBACK_REASONS: tuple[FallbackReason, ...] = (
    FALLBACK_DEADLINE, FALLBACK_ERROR, FALLBACK_REDIS, FALLBACK_MISSING_VERSION)


_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


def labelled(metric: _Metric) -> Callable[..., _Metric]:
    """`metric.labels`, each child looked up once: on the hot path `labels()` costs many times
    the count itself (bench/README.md, *Why the code is written as it is*)."""
    return functools.lru_cache(maxsize=4096)(metric.labels)


_flow_errors = labelled(FLOW_ERRORS)
_fallbacks = labelled(FALLBACKS)


def count_flow_error(flow: str, step: str, steps: Collection[str]) -> None:
    """A step of `flow` raised; `steps`: the flow's step ids, the only values the label takes."""
    _flow_errors(flow, step if step in steps else NOT_A_STEP).inc()


def count_fallback(channel: str, flow: str, reason: FallbackReason) -> None:
    """A contact of `flow` sent to its fallback, for `reason` (one of FALLBACK_REASONS)."""
    _fallbacks(channel, flow, reason).inc()


def count_failures_from_zero(flows: Iterable[Flow]) -> None:
    """Make each flow's error and fallback series, at 0, as the flows are loaded to be served:
    a first failure is then a rise that Prometheus' rate() and increase() see, rather than a
    series that appears at 1."""
    for flow in flows:
        for step in flow.steps:
            _flow_errors(flow.name, step)
        for channel in flow.trigger.channels:
            for reason in FALLBACK_REASONS:
                _fallbacks(channel, flow.name, reason)


def exposition() -> bytes:
    """Every metric in Prometheus' text format: this process's, or every worker's summed."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    return generate_latest(registry)


def process_exited(pid: int) -> None:
    """Drop the gauges of a worker that has stopped (its counters keep counting in the sums)."""
    if MULTIPROCESS_DIR is not None:
        multiprocess.mark_process_dead(pid, MULTIPROCESS_DIR)
