"""`fetch`: an HTTP request whose JSON answer fills variables. Any failure takes `on_error`.

    lookup:
      kind: fetch
      url: "{{ settings.loyalty_api_url }}/customers/{{ contact.number | urlencode }}"
      headers:
        Authorization: "{% if settings.loyalty_api_token %}Bearer {{ settings.loyalty_api_token }}{% endif %}"
      timeout: 2            # seconds, never beyond the webhook's routing deadline
      save:
        tier: loyaltyStatus  # variable: dotted path into the JSON answer (missing -> None)
      next: by_tier
      on_error: by_tier     # non-2xx, timeout, refused connection, a body that is not JSON

A header whose value renders empty is not sent. After the step, `steps.<id>` holds `status`
(HTTP status or None), `outcome` (ok, http_error, timeout, connection_error, invalid_json,
too_large, bad_url, no_time) and `elapsed_ms`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any, Literal

import httpx
from pydantic import Field, StringConstraints

from ivr.flows.step import Run, Step, StepId, VarName, register_step
from ivr.flows.templates import Template

log = logging.getLogger("ivr.flows.fetch")

MAX_RESPONSE_BYTES = 256 * 1024
# Kept back from the routing deadline so a timed-out fetch still leaves time to route.
DEADLINE_RESERVE = 0.15

HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~\-]{1,64}$")]
JsonPath = Annotated[str, StringConstraints(pattern=r"^[^.\s]{1,64}(\.[^.\s]{1,64}){0,15}$")]


class FetchFailed(Exception):
    def __init__(self, outcome: str, status: int | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.status = status


def _pick(document: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(document, dict):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document


@register_step
class FetchStep(Step):
    kind: Literal["fetch"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: Template
    headers: dict[HeaderName, Template] = Field(default_factory=dict, max_length=20)
    body: Template | None = None
    timeout: float = Field(default=2.0, gt=0, le=10)
    save: dict[VarName, JsonPath] = Field(default_factory=dict, max_length=50)
    next: StepId
    on_error: StepId

    exit_fields = ("next", "on_error")

    async def run(self, run: Run) -> str | None:
        started = time.perf_counter()
        status: int | None = None
        try:
            status, document = await self._request(run)
            outcome = "ok"
        except FetchFailed as failure:
            outcome, status, document = failure.outcome, failure.status, None
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        run.steps[run.current_step] = {
            "status": status,
            "outcome": outcome,
            "elapsed_ms": elapsed_ms,
        }
        log.debug("fetch %s: %s status=%s %.1f ms", run.current_step, outcome, status, elapsed_ms)
        if outcome != "ok":
            return self.on_error
        for name, path in self.save.items():
            run.vars[name] = _pick(document, path)
        return self.next

    async def _request(self, run: Run) -> tuple[int, Any]:
        variables = run.variables
        url = self.url.render(variables).strip()
        if not url.startswith(("http://", "https://")):
            raise FetchFailed("bad_url")
        headers = {}
        for name, template in self.headers.items():
            value = template.render(variables).strip()
            if value:
                headers[name] = value
        content = self.body.render(variables).encode() if self.body is not None else None
        timeout = min(self.timeout, run.remaining() - DEADLINE_RESERVE)
        if timeout <= 0:
            raise FetchFailed("no_time")
        try:
            # asyncio.timeout bounds the whole exchange, a trickling body included.
            async with asyncio.timeout(timeout):
                async with run.http.stream(
                    self.method, url, headers=headers, content=content, timeout=timeout
                ) as response:
                    status = response.status_code
                    if not 200 <= status < 300:
                        raise FetchFailed("http_error", status)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise FetchFailed("too_large", status)
        except (TimeoutError, httpx.TimeoutException):
            raise FetchFailed("timeout") from None
        except (httpx.HTTPError, OSError, ValueError):
            raise FetchFailed("connection_error") from None
        except FetchFailed:
            raise
        except Exception as exc:  # the transport's own errors; the flow still gets its error exit
            log.warning("fetch %s: %s from the HTTP client", run.current_step, type(exc).__name__)
            raise FetchFailed("connection_error") from None
        try:
            return status, json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise FetchFailed("invalid_json", status) from None
