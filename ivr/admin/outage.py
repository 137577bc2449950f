"""The admin API and page while Redis is down or hung: a bounded wait and a plain answer (503),
never a request that hangs for minutes or a bare 500. Calls are routed all the while, from the
configuration each instance holds in memory; only admin work needs Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

# An admin request waits this long for Redis, then is told it did not answer.
STORE_TIMEOUT = 5.0
CALLS_STILL_ROUTE = ("Calls are still routed, from the configuration every instance holds. "
                     "Try again once /readyz reports ready.")


class StoreUnavailable(Exception):
    """Redis could not serve an admin request; the message says what that means for it."""


@asynccontextmanager
async def store_bounded(method: str = "POST") -> AsyncIterator[asyncio.Timeout]:
    """Bound an admin request of HTTP `method` (a GET or HEAD reads, and is told so); the
    deadline is given, to be lifted once the request no longer waits for Redis."""
    try:
        async with asyncio.timeout(STORE_TIMEOUT) as deadline:
            yield deadline
    except (TimeoutError, RedisTimeoutError):  # our deadline, or redis-py's socket timeout
        if method in ("GET", "HEAD"):
            raise StoreUnavailable(f"Redis did not answer within {STORE_TIMEOUT:g} s: nothing "
                                   f"could be read. {CALLS_STILL_ROUTE}") from None
        raise StoreUnavailable(
            f"Redis did not answer within {STORE_TIMEOUT:g} s, so nothing was confirmed. A change "
            "sent may still be applied when Redis answers: look at the queue's history before "
            f"trying it again. {CALLS_STILL_ROUTE}") from None
    except (RedisError, ConnectionError) as exc:  # not any OSError: it would blame Redis
        raise StoreUnavailable(f"Redis is unreachable ({type(exc).__name__}): nothing could be "
                               f"read or saved. {CALLS_STILL_ROUTE}") from None
