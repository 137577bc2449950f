"""Prometheus metrics of the hot path. Every metric is defined here, once, by name.

Under `ivr serve` every worker records into files under PROMETHEUS_MULTIPROC_DIR (set by `ivr serve`
before the workers start: prometheus_client reads it when it is imported), and `exposition()` sums
them, so any worker answers /metrics for all of them, the workers a reload replaced included. A
gauge is a `live` one: a worker that stopped takes its value with it (`process_exited`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

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
CALL_TRACES_DROPPED = Counter(
    "ivr_call_traces_dropped_total", "Call traces not stored (Redis unreachable or too slow)")


_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


def labelled(metric: _Metric) -> Callable[..., _Metric]:
    """`metric.labels`, each child looked up once: on the hot path `labels()` costs many times
    the count itself (bench/README.md, *Why the code is written as it is*)."""
    return functools.lru_cache(maxsize=4096)(metric.labels)


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
