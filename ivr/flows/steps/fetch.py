"""An HTTP request whose JSON answer fills variables.

```yaml
lookup:
  kind: fetch
  method: GET                  # GET (default), POST, PUT, PATCH, DELETE
  url: "{{ settings.loyalty_api_url }}/customers/{{ contact.number | urlencode }}"
  headers:                     # a header whose value renders empty is not sent
    Authorization: "{% if settings.loyalty_api_token %}Bearer {{ settings.loyalty_api_token }}{% endif %}"
    Content-Type: application/json   # with a body: no Content-Type is sent unless given here
  body: '{"number": "{{ contact.number }}"}'   # optional
  timeout: 2                   # seconds (2 by default), at most 10, never beyond the routing deadline
  retries: 1                   # after a fault (below), if time allows (0-3; 0 by default)
  cache: 5m                    # definitive answers shared by all instances; optional
  stale_while_revalidate: 1h   # serve an old answer while refreshing; optional, needs `cache`
  save:
    tier: loyaltyStatus        # variable: dotted path in the JSON answer (items.0.name); missing -> None
  next: by_tier
  on_error: by_tier            # required
```

Any failure takes `on_error`: a status other than 2xx, a timeout, a refused connection, a body that
is not JSON or is over 256 KiB, a URL that is not `http(s)://`, no time left before the
deadline, or an open circuit. `steps.<id>.outcome` says which: `ok`, `http_error`, `timeout`,
`connection_error`, `invalid_json`, `too_large`, `bad_url`, `no_time`, `breaker_open`;
`steps.<id>.status` is the HTTP status (or None). On `on_error`, `save` sets nothing.

`retries` tries again after a fault, while the routing deadline leaves time for it. A fault is
a timeout, a refused connection, a 5xx, or a 2xx whose body is not JSON or is too large; faults
also count against the upstream's circuit breaker. A 4xx is an answer, not a fault. Besides
`retries`, a GET, PUT or DELETE whose connection closes before any answer is sent once more at
once, as HTTP/1.1 allows (aiohttp does it); a request answered in part, or a POST, never is.

`cache` keeps definitive answers (2xx, 4xx) for that long (seconds, or `5m`, `1h`, `1d`: 1 s to
7 days), shared by every instance, and concurrent identical requests make one;
`stale_while_revalidate` then serves the old answer that much longer while a refresh runs in the
background. `steps.<id>.cache` says how the answer came: `hit`, `stale`, `coalesced` or `miss`
(absent when the step does not cache). An upstream that keeps failing has its circuit opened: its
requests then fail at once (`breaker_open`) until a probe finds it back.

An admin purges a step's cached answers, one caller's or all, with
`ivr cache purge FLOW STEP [--caller +15551234567]` (or `POST /admin/api/cache/purge`): see the
main README. A caller's answers are found by rendering the step's request for that contact (on
each channel the flow serves), so a purge of one caller needs a request made only of `contact.*`
(its memory included), `settings.*` and `secrets.*`; a step whose URL, headers or body read
`params`, `vars` or `steps` can be purged whole.

#### Secrets

An API's token does not belong in a flow file, which is kept in git and reviewed like code. Set
it on the server as `IVR_SECRET_<NAME>` (in the environment or `.env`), and the flow reads it as
`secrets.<name>`, lower-cased: `IVR_SECRET_CRM_TOKEN` is `secrets.crm_token`.

```yaml
secrets:                       # optional: how the flow uses each secret
  crm_token: {optional: true}  # may be unset; then it reads as empty
steps:
  lookup:
    kind: fetch
    url: "https://crm.example.com/customers?email={{ contact.email | urlencode }}"
    headers:
      Authorization: "{% if secrets.crm_token %}Bearer {{ secrets.crm_token }}{% endif %}"
    next: by_type
    on_error: by_type
```

- **Only where a request goes.** A secret can be read in a `fetch` step's `url`, `headers` and
  `body`, and nowhere else: in a `say` text, an `ask` prompt, a `set` value, a `branch` `value` or
  `when`, or a `route` message it would reach a caller, an agent or a session, so the flow does
  not load (`steps.greet.text: secrets.crm_token can only be read in a fetch step's url, headers
  and body`). A secret is read by its name (`secrets.crm_token`, or `secrets['crm_token']`):
  `{{ secrets }}` or `secrets[vars.name]` could read any of them, and are refused.
- **Required unless declared optional.** A flow that reads a secret that is not set does not
  load, and the error says what to set (`steps.lookup.headers.Authorization: secrets.crm_token
  is not set: set IVR_SECRET_CRM_TOKEN, or declare it optional in the flow ...`): a token that is
  missing in production is found when the server starts, not by the first caller. A name very
  close to a secret that is set is told as its misspelling (`secrets.crm_tokn is not set: did
  you mean 'crm_token'? (IVR_SECRET_CRM_TOKEN is set)`). A secret the flow can do without, as
  the shipped `vip_by_email` does its CRM token (the example runs on a laptop with nothing
  set), is declared `optional: true` in the flow's `secrets:`; unset, it reads as empty, a
  header that renders empty is not sent, and the server's start says so in its log
  (`flow vip_by_email: secrets.crm_token is not set (declared optional) ...`), since an API
  that needs the token refuses the request (the flow's error exit). The declaration sits in the
  flow, next to the steps it concerns, so a reviewer sees which secrets a flow needs and which it
  can do without; a name declared but read by no step is a load error too (a misspelling).
  `ivr flows validate` and `ivr simulate` check against the secrets set where they run (in CI,
  set each required one, to any value of at least 8 characters: a shorter value is refused, as it
  could not be hidden in logs).
- **Never shown.** A secret's value is not in a log line (`[secret crm_token]` stands in its
  place, as given, URL-encoded or JSON-escaped, even in an error's traceback), not in a call
  trace (a fetch records its outcome, status and time, not its URL), not in `ivr simulate`'s
  output (see below), and not in an error message of the HTTP client (which never quotes a URL).
- **Free per call.** A URL, header or body that reads only `settings.*` and `secrets.*` is
  rendered once, when the first call needs it.

An address is not a secret: keep the API's URL in the flow, where it is reviewed (the shipped
`vip_by_email` reaches its example CRM at `settings.loyalty_api_url` only so that one test server
serves both; put your CRM's address there). Put a key that rides in the URL
(`?key={{ secrets.maps_key | urlencode }}`) in a secret too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, PrivateAttr, model_validator

from ivr.flows.durations import duration
from ivr.flows.http import HttpConnectionError, HttpTimeout
from ivr.flows.step import (
    FlowParts,
    PurgeableCache,
    Run,
    Step,
    StepId,
    StepResult,
    VarName,
    register_step,
)
from ivr.flows.templates import Template
from ivr.flows.upstream import Answer, Upstreams
from ivr.metrics import FETCH_SECONDS, FETCHES, labelled
from ivr.validation import Problem, explained_pattern

log = logging.getLogger("ivr.flows.fetch")
_fetch_seconds = labelled(FETCH_SECONDS)
_fetches = labelled(FETCHES)

MAX_RESPONSE_BYTES = 256 * 1024
# Kept back from the routing deadline so a timed-out fetch still leaves time to route.
DEADLINE_RESERVE = 0.15
# An attempt with less time than this is not worth starting.
MIN_ATTEMPT_SECONDS = 0.02
# Outcomes that count against an upstream's circuit breaker (with any 5xx) and are retried.
FAULTS = {"timeout", "connection_error", "invalid_json", "too_large"}
# Outcomes (with any 5xx) where the upstream gave no answer now that a later request may get;
# not an answer (ok, a 4xx), nor the flow's own mistake (bad_url).
UNANSWERED = FAULTS | {"no_time", "breaker_open"}
CacheTtl = duration(timedelta(seconds=1), timedelta(days=7))

HeaderName = explained_pattern(
    r"^[A-Za-z0-9!#$%&'*+.^_`|~\-]{1,64}$", "an HTTP header name",
    "up to 64 letters, digits or !#$%&'*+.^_`|~- (no spaces or ':'), e.g. X-Api-Key")
JsonPath = explained_pattern(
    r"^[^.\s]{1,64}(\.[^.\s]{1,64}){0,15}$", "a path into the JSON answer",
    "names (or list indexes) joined by dots, without spaces, e.g. customer.tier")


def _pick(document: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(document, dict):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document


# A hot caller's request is the same call after call: its upstream and cache key are worked
# out once, as a URL split and a SHA-256 cost more than a cache look-up (bench/README.md).
@functools.lru_cache(maxsize=4096)
def _upstream(url: str) -> str:
    """What a request's breaker and metrics are named by: its host and port, never the user and
    password a URL may carry (a metric label is on /metrics, for anyone who can reach it)."""
    return urlsplit(url).netloc.rpartition("@")[2]


@functools.lru_cache(maxsize=4096)
def _cache_key(prefix: str, method: str, url: str, headers: tuple[tuple[str, str], ...],
               content: bytes | None) -> str:
    return prefix + hashlib.sha256(repr((method, url, sorted(headers), content)).encode()
                                   ).hexdigest()


# A request: its URL, the headers to send, the body, and its cache key (None: not cached).
Request = tuple[str, dict[str, str], bytes | None, str | None]


@register_step
class FetchStep(Step):
    kind: Literal["fetch"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: Template
    headers: dict[HeaderName, Template] = Field(default_factory=dict, max_length=20)
    body: Template | None = None
    timeout: float = Field(default=2.0, gt=0, le=10)
    retries: int = Field(
        default=0, ge=0, le=3,
        description="Tries again after a fault (a timeout, a refused connection, a 5xx, or a 2xx "
        "whose body is not JSON or is too large), while the routing deadline leaves time for it.")
    cache: CacheTtl | None = Field(
        default=None, description="Keep definitive answers (2xx, 4xx) this long, shared by "
        "every instance; concurrent identical requests make one.")
    stale_while_revalidate: CacheTtl | None = Field(
        default=None, description="After `cache`, serve the old answer this much longer while "
        "a refresh runs in the background.")
    save: dict[VarName, JsonPath] = Field(default_factory=dict, max_length=50)
    next: StepId
    on_error: StepId

    reference_order = 10
    exit_fields = ("next", "on_error")
    secret_fields = ("url", "headers", "body")
    records = ("status", "outcome", "elapsed_ms", "cache")
    records_traced = True  # what the API answered and how fast: nothing the contact said
    may_cache = True

    # Which cache is the step's (its flow and id), set when its flow loads.
    _scope: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _stale_needs_cache(self) -> FetchStep:
        if self.stale_while_revalidate is not None and self.cache is None:
            raise ValueError("stale_while_revalidate needs `cache`")
        return self

    def vars_set(self) -> frozenset[str]:
        return frozenset(self.save)

    def went_unanswered(self, record: dict[str, Any]) -> bool:
        return record.get("outcome") in UNANSWERED or (record.get("status") or 0) >= 500

    def purgeable_cache(self) -> PurgeableCache | None:
        return self if self.cache is not None else None

    def bind(self, flow: FlowParts) -> list[Problem]:
        step_id = next(step_id for step_id, step in flow.steps.items() if step is self)
        # Quoted: a flow's name could hold the `/` and `:` that keys are split at.
        self._scope = f"{quote(flow.name, safe='')}/{step_id}"
        return []

    @functools.cached_property
    def cache_scope(self) -> str:
        """The flow and step whose cache this is, as cache keys name them. Cached: a private
        attribute is read through pydantic's `__getattr__` on every call."""
        assert self._scope, "cache_scope is read before the flow bound its steps"
        return self._scope

    def cache_key(self, upstreams: Upstreams, variables: dict[str, Any]) -> str | None:
        """The cache key of the request the step makes with these variables (None: it makes
        none, its URL is not http or https): `ivr cache purge --caller` (ivr.redis.
        fetch_cache_purges) finds a caller's answers by rendering it for that contact."""
        request = self._request(variables, upstreams)
        return None if request is None else request[3]

    def request_variables(self) -> frozenset[str]:
        """The variables the step's request is made of (contact, settings, params...)."""
        templates = [self.url, *self.headers.values(), *([self.body] if self.body else [])]
        return frozenset().union(*(template.variables() for template in templates))

    async def run(self, run: Run) -> StepResult:
        started = time.perf_counter()
        answer, how = await self._answer(run)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        run.steps[run.current_step] = {
            "status": answer.status,
            "outcome": answer.outcome,
            "elapsed_ms": elapsed_ms,
            **({"cache": how} if how else {}),
        }
        if answer.outcome != "ok":
            return self.on_error
        for name, path in self.save.items():
            run.vars[name] = _pick(answer.document, path)
        return self.next

    async def _answer(self, run: Run) -> tuple[Answer, str | None]:
        upstreams = run.upstreams
        request = self._request(run.variables, upstreams)
        if request is None:
            return Answer("bad_url"), None
        url, headers, content, key = request
        upstream = _upstream(url)

        async def load() -> Answer:
            return await self._exchange(run, upstream, url, headers, content)

        if key is None or upstreams is None or self.cache is None:  # the step does not cache
            return await load(), None
        stale = self.stale_while_revalidate.total_seconds() if self.stale_while_revalidate else 0
        return await upstreams.cached(key, upstream, self.cache.total_seconds(), stale, load)

    def _request(self, variables: dict[str, Any], upstreams: Upstreams | None) -> Request | None:
        """The request rendered with the run's variables, with its key in the cache of
        `upstreams` if the step caches; None if its URL is not http(s)."""
        url = self.url.render(variables).strip()
        if not url.startswith(("http://", "https://")):
            return None
        headers = {}
        for name, template in self.headers.items():
            value = template.render(variables).strip()
            if value:
                headers[name] = value
        content = self.body.render(variables).encode() if self.body is not None else None
        key = None
        if self.cache is not None and upstreams is not None:
            key = _cache_key(upstreams.key_prefixes[self.cache_scope], self.method, url,
                             tuple(headers.items()), content)
        return url, headers, content, key

    async def _exchange(self, run: Run, upstream: str, url: str, headers: dict[str, str],
                        content: bytes | None) -> Answer:
        """The request, through the upstream's circuit breaker, tried again on a fault while
        the deadline allows."""
        breaker = run.upstreams.breaker(upstream) if run.upstreams is not None else None
        answer = Answer("no_time")
        for _ in range(self.retries + 1):
            timeout = min(self.timeout, run.remaining() - DEADLINE_RESERVE)
            if timeout <= MIN_ATTEMPT_SECONDS:
                break
            if breaker is not None and not breaker.allow():
                answer = Answer("breaker_open")
                break
            started = time.perf_counter()
            try:
                answer = await self._attempt(run, url, headers, content, timeout)
            except asyncio.CancelledError:  # cut short (the deadline): it proved nothing
                if breaker is not None:
                    breaker.abandoned()
                raise
            _fetch_seconds(upstream).observe(time.perf_counter() - started)
            fault = answer.outcome in FAULTS or (answer.status or 0) >= 500
            if breaker is not None:
                breaker.failed() if fault else breaker.succeeded()
            if not fault:
                break
        _fetches(upstream, answer.outcome).inc()
        return answer

    async def _attempt(self, run: Run, url: str, headers: dict[str, str],
                       content: bytes | None, timeout: float) -> Answer:
        try:
            reply = await run.http.send(self.method, url, headers, content, timeout,
                                        MAX_RESPONSE_BYTES)
        except HttpTimeout:
            return Answer("timeout")
        except HttpConnectionError:
            return Answer("connection_error")
        except Exception as exc:  # a client's bug; the flow still gets its error exit
            log.warning("fetch %s: %s from the HTTP client", run.current_step, type(exc).__name__)
            return Answer("connection_error")
        if not 200 <= reply.status < 300:
            return Answer("http_error", reply.status)
        if reply.body is None:
            return Answer("too_large", reply.status)
        try:
            return Answer("ok", reply.status, json.loads(reply.body))
        except (ValueError, UnicodeDecodeError):
            return Answer("invalid_json", reply.status)
