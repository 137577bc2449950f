"""Prometheus metrics of the hot path. Every metric is defined here, once, by name."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    ["upstream"], multiprocess_mode="max")
