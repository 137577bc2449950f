"""The admin guard: one middleware on each admin mount (the API's and the page's) that refuses
every request while no admin is configured, and bounds the request's wait for Redis, answering
the mount's own way (JSON for the API, a page for the page) when Redis does not serve it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ivr.admin.outage import StoreUnavailable, store_bounded

log = logging.getLogger("ivr.admin")

OPTIONS_NEEDED = "AdminGuard needs is_enabled, disabled and unavailable"


class AdminGuard:
    """Guard an admin mount.

    is_enabled: whether the app of the request has an admin who can sign in or call.
    disabled: the answer while it has none (nothing else runs).
    unavailable: the answer when Redis did not serve the request in time, or is unreachable.
    The bound ends when the response starts: sending it is not waiting for Redis."""

    def __init__(self, app: ASGIApp, *, is_enabled: Callable[[Request], bool],
                 disabled: Callable[[Request], Response],
                 unavailable: Callable[[Request, StoreUnavailable], Response]) -> None:
        assert callable(is_enabled) and callable(disabled) and callable(unavailable), \
            OPTIONS_NEEDED
        self.app = app
        self.is_enabled = is_enabled
        self.disabled = disabled
        self.unavailable = unavailable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if not self.is_enabled(request):
            await self.disabled(request)(scope, receive, send)
            return
        try:
            async with store_bounded(request.method) as deadline:

                async def send_unbounded(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        deadline.reschedule(None)  # a slow reader is not a slow Redis
                    await send(message)

                await self.app(scope, receive, send_unbounded)
        except StoreUnavailable as exc:
            await self.unavailable(request, exc)(scope, receive, send)
