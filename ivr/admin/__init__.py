"""Administration: the admin API, the admin web page, and how admins are authenticated."""

from __future__ import annotations

from starlette.requests import Request

from ivr.redis.queue_store import QueueStore


def store_of(request: Request) -> QueueStore:
    """The store of the app serving `request` (the admin API's and the page's)."""
    return request.app.state.services.store
