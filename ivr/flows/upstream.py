"""What flows' HTTP requests share in a process: a circuit breaker per upstream, and the cache
of answers with single-flight and stale-while-revalidate: kept in the process, in front of the
answers every instance shares (`SharedAnswers`, a protocol: in Redis, ivr.redis.fetch_cache).

A cache key names its fetch step and the step's generation, then the request:
`ivr:fetch:<flow>/<step>:<generation>:<SHA-256 of the request>`. Purging one caller removes
that caller's keys; purging a whole step makes its generation the next one, so no instance
reads the step's older answers again (they expire from the shared store by themselves).
Generations are kept in memory (ivr.redis.fetch_cache_purges keeps them current), so a lookup
costs no extra round trip.

A dead loyalty API must cost callers nothing once detected: after `failure_threshold` failures
in a row its breaker opens and requests fail at once (the flow takes its error exit) until a
single probe, `open_seconds` later, finds it back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ivr.metrics import BREAKER_STATE, FETCH_CACHE, labelled

log = logging.getLogger("ivr.flows.upstream")
_cache_counter = labelled(FETCH_CACHE)

CACHE_TIMEOUT = 0.25  # a slow shared store must not cost more than going to the upstream
# Answers also kept in the process, in front of the shared store: a hot caller costs no round
# trip.
LOCAL_ENTRIES = 10_000
CACHE_KEY_PREFIX = "ivr:fetch:"
_STATES = {"closed": 0, "half-open": 1, "open": 2}


@dataclass(frozen=True)
class Answer:
    """What a fetch got: `outcome` ok, http_error, timeout, connection_error, invalid_json,
    too_large, bad_url, no_time or breaker_open; `document` is the JSON answer when ok."""

    outcome: str
    status: int | None = None
    document: Any = None

    @property
    def definitive(self) -> bool:
        """Worth caching: the upstream said something about this request (not a fault)."""
        return self.outcome == "ok" or (self.outcome == "http_error" and (self.status or 0) < 500)


class SharedAnswersUnavailable(Exception):
    """The shared answers cannot be read now (unreachable, refusing): go to the upstream."""


class SharedAnswers(Protocol):
    """The answers every process and instance share. A read is bounded by CACHE_TIMEOUT here;
    a write is never waited for."""

    async def read(self, key: str) -> tuple[float, Answer] | None:
        """(when it was fetched, the answer) kept under `key`, or None; raises
        SharedAnswersUnavailable when the store cannot tell."""
        ...

    def write(self, key: str, at: float, answer: Answer, keep_for: float) -> None:
        """Keep `answer`, fetched at `at` (epoch seconds), under `key` for `keep_for` seconds,
        in the background: a write that fails is the store's to report."""
        ...


class Breaker:
    """Closed -> (threshold failures in a row) open -> (after open_seconds) half-open, where one
    probe decides: success closes, failure opens again."""

    def __init__(self, name: str, threshold: int, open_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self.state = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        BREAKER_STATE.labels(name).set(0)

    def allow(self) -> bool:
        if self.state == "open" and self._clock() - self._opened_at >= self.open_seconds:
            self._set("half-open")
        if self.state == "half-open":
            if self._probing:
                return False
            self._probing = True
            return True
        return self.state == "closed"

    def succeeded(self) -> None:
        self._failures = 0
        self._probing = False
        if self.state != "closed":
            log.info("upstream %s answers again: circuit closed", self.name)
            self._set("closed")

    def abandoned(self) -> None:
        """A request let through was cut short on our side: if it was the probe, the next
        request probes instead (else the circuit would stay half-open, refusing all)."""
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        self._probing = False
        if self.state == "half-open" or (self.state == "closed" and
                                         self._failures >= self.threshold):
            if self.state == "closed":
                log.warning("upstream %s failed %d times in a row: circuit open for %g s",
                            self.name, self._failures, self.open_seconds)
            self._opened_at = self._clock()
            self._set("open")

    def _set(self, state: str) -> None:
        self.state = state
        BREAKER_STATE.labels(self.name).set(_STATES[state])


class _KeyPrefixes(dict[str, str]):
    """Cache scope (flow/step) -> what its cache keys begin with: the step and its current
    generation. A dict whose missing entries make themselves: a lookup costs no Python call."""

    def __init__(self, generations: dict[str, int]) -> None:
        super().__init__()
        self._generations = generations

    def __missing__(self, scope: str) -> str:
        prefix = self[scope] = f"{CACHE_KEY_PREFIX}{scope}:{self._generations.get(scope, 0)}:"
        return prefix


class Upstreams:
    """Per process: breakers by upstream, requests in flight by cache key, the answers kept
    in front of the shared ones, and the generation of every fetch step's cache."""

    def __init__(self, shared: SharedAnswers | None, failure_threshold: int = 5,
                 open_seconds: float = 10.0) -> None:
        self.shared = shared  # None: what the process keeps is all there is
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._breakers: dict[str, Breaker] = {}
        self._in_flight: dict[str, asyncio.Task[Answer]] = {}
        # key -> (when fetched, answer, wall time until which it may be used): the same bound
        # as in the shared store.
        # An OrderedDict: popping a plain dict's first key scans the slots its earlier pops left,
        # on every lookup once the cache is full (bench/README.md, "Why the code is written as
        # it is").
        self._local: collections.OrderedDict[str, tuple[float, Answer, float]] = (
            collections.OrderedDict())
        # Cache scope (flow/step) -> its generation, and the key prefix that says both.
        self._generations: dict[str, int] = {}
        self.key_prefixes = _KeyPrefixes(self._generations)
        # Bumped by every purge this process applies: an answer read or loaded across one is
        # not kept, since it may be what the purge removed.
        self._purges = 0

    def breaker(self, upstream: str) -> Breaker:
        breaker = self._breakers.get(upstream)
        if breaker is None:
            breaker = Breaker(upstream, self.failure_threshold, self.open_seconds)
            self._breakers[upstream] = breaker
        return breaker

    async def cached(self, key: str, upstream: str, ttl: float, stale_for: float,
                     load: Callable[[], Awaitable[Answer]]) -> tuple[Answer, str]:
        """The answer for `key` (one of `key_prefixes`, then the request's hash)
        and how it came: hit, stale (a refresh was started), coalesced (joined the same request
        in flight) or miss. Only definitive answers are cached."""
        cached = await self._read(key, ttl + stale_for)
        if cached is not None:
            at, answer = cached
            age = time.time() - at
            if age < ttl:
                return self._count(upstream, answer, "hit")
            if age < ttl + stale_for:
                if key not in self._in_flight:
                    self._start(key, ttl + stale_for, load)
                return self._count(upstream, answer, "stale")
        task = self._in_flight.get(key)
        how = "coalesced" if task is not None else "miss"
        if task is None:
            task = self._start(key, ttl + stale_for, load)
        # Shielded: a caller cut short by its deadline leaves the request to finish for others.
        return self._count(upstream, await asyncio.shield(task), how)

    def _start(self, key: str, keep_for: float, load: Callable[[], Awaitable[Answer]]
               ) -> asyncio.Task[Answer]:
        purges = self._purges

        async def load_and_store() -> Answer:
            try:
                answer = await load()
                if answer.definitive and purges == self._purges:
                    self._write(key, answer, keep_for)
                return answer
            finally:
                if self._in_flight.get(key) is task:  # a purge may have let a new one start
                    del self._in_flight[key]

        task = asyncio.ensure_future(load_and_store())
        self._in_flight[key] = task
        return task

    @staticmethod
    def _count(upstream: str, answer: Answer, how: str) -> tuple[Answer, str]:
        _cache_counter(upstream, how).inc()
        return answer, how

    async def _read(self, key: str, keep_for: float) -> tuple[float, Answer] | None:
        """(when it was fetched, the answer): from this process, or else from the shared
        store (then kept here too, for `keep_for` after it was fetched)."""
        local = self._local.get(key)
        if local is not None:
            if local[2] > time.time():
                return local[0], local[1]
            del self._local[key]
        if self.shared is None:
            return None
        purges = self._purges
        try:
            async with asyncio.timeout(CACHE_TIMEOUT):
                shared = await self.shared.read(key)
        except (SharedAnswersUnavailable, TimeoutError):
            return None  # the cache is an optimisation: go to the upstream
        if shared is not None and purges == self._purges:
            at, answer = shared
            self._keep_local(key, at, answer, at + keep_for)
        return shared

    def _keep_local(self, key: str, at: float, answer: Answer, until: float) -> None:
        if key not in self._local and len(self._local) >= LOCAL_ENTRIES:
            self._local.popitem(last=False)  # the oldest entry
        self._local[key] = (at, answer, until)

    def _write(self, key: str, answer: Answer, keep_for: float) -> None:
        """Keep the answer here at once, and in the shared store in the background: the caller
        waiting for it does not wait for the write too."""
        at = time.time()
        self._keep_local(key, at, answer, at + keep_for)
        if self.shared is not None:
            self.shared.write(key, at, answer, keep_for)

    # --- purges (ivr.redis.fetch_cache_purges applies them in every process) ---------------

    def forget(self, keys: Iterable[str]) -> None:
        """Purge these keys' answers from the process: the next lookup of each goes to the
        shared store (and, if the purge removed it there, to the upstream)."""
        self._purges += 1
        for key in keys:
            self._local.pop(key, None)
            self._in_flight.pop(key, None)  # a new lookup does not join one begun before

    def set_generations(self, generations: Mapping[str, int]) -> None:
        """Take the generation of every fetch step's cache (absent: 0, never purged whole)."""
        changed = {scope for scope in {*generations, *self._generations}
                   if generations.get(scope, 0) != self._generations.get(scope, 0)}
        self._generations.clear()
        self._generations.update(generations)
        self._drop_other_generations(changed)

    def set_generation(self, scope: str, generation: int) -> None:
        """A whole step's purge: its answers from earlier generations are no longer used."""
        if generation > self._generations.get(scope, 0):  # else known already
            self._generations[scope] = generation
            self._drop_other_generations({scope})

    def _drop_other_generations(self, scopes: set[str]) -> None:
        if not scopes:
            return
        self._purges += 1
        for scope in scopes:
            self.key_prefixes.pop(scope, None)
        steps = tuple(f"{CACHE_KEY_PREFIX}{scope}:" for scope in scopes)
        current = tuple(self.key_prefixes[scope] for scope in scopes)
        for key in [k for k in self._local if k.startswith(steps) and not k.startswith(current)]:
            del self._local[key]

    def forget_everything(self) -> None:
        """Drop every answer the process keeps (the shared store still has them): after purges
        this process may have missed."""
        self._purges += 1
        self._local.clear()
        self._in_flight.clear()
