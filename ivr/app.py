"""The Starlette application: routes, and the lifespan that builds what every request shares."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import TypeVar

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from ivr.admin import api as admin_api
from ivr.admin import flow_pages as admin_flow_pages
from ivr.admin import pages as admin_pages
from ivr.admin.auth import resolve_admin_token
from ivr.admin.guard import AdminGuard
from ivr.channels.voice import CallbackUrls
from ivr.channels.webhook import ENDPOINTS, WebhookRoutes
from ivr.flow_versions import (
    FlowChecks,
    FlowsRefused,
    LiveFlows,
    check_starting_flows,
    starting_flows,
)
from ivr.flows.http import AiohttpClient
from ivr.flows.loader import FlowLoadError, FlowSet
from ivr.flows.upstream import Upstreams
from ivr.logs import batched_lines, configure_logging
from ivr.metrics import CONTENT_TYPE, MULTIPROCESS_DIR, exposition, process_exited
from ivr.queues import QueueConfigError, load_queue_file
from ivr.redis.autopipeline import AutoPipeline
from ivr.redis.call_traces import CallTraces
from ivr.redis.client import connect, without_credentials
from ivr.redis.conversations import Conversations
from ivr.redis.fetch_cache import RedisSharedAnswers
from ivr.redis.fetch_cache_purges import FetchCachePurges
from ivr.redis.flow_store import FlowStore
from ivr.redis.queue_store import QueueStore
from ivr.redis.sessions import Sessions
from ivr.services import HoldPolicy, Services
from ivr.settings import InvalidSettings, Settings, load_settings
from ivr.turn import Surroundings
from ivr.twilio_security import WebhookVerifier, resolve_auth_token

log = logging.getLogger("ivr.app")

# Allocations (net of frees) between two collections of the youngest generation (Python: 700).
GC_YOUNG_THRESHOLD = 50_000
# How long /readyz waits for Redis to answer PING: a probe must answer fast, even when Redis hangs.
READY_PING_TIMEOUT = 0.5
# How long a stopping process waits, beyond the decision deadline, for its writes to be made.
DRAIN_MARGIN = 1.0


def create_app(settings: Settings | None = None) -> Starlette:
    if settings is None:  # under an ASGI server's --factory: from the environment
        try:
            settings = load_settings()
        except InvalidSettings as exc:
            raise SystemExit(f"ivr: {exc}") from None
    configure_logging(settings.log_level, settings.log_format, settings.secrets_to_hide())
    app = Starlette(
        routes=[
            *(Route(path, endpoint, methods=["POST"]) for path, endpoint in ENDPOINTS.items()),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/api/openapi.json", admin_api.openapi, methods=["GET"]),
            Mount("/admin/api", routes=admin_api.routes, middleware=[Middleware(
                AdminGuard, is_enabled=admin_api.api_enabled,
                disabled=admin_api.disabled_answer,
                unavailable=admin_api.store_unavailable_answer)]),
            Mount("/admin/static", admin_pages.static_files, name="admin_static"),
            Mount("/admin", routes=[*admin_pages.routes, *admin_flow_pages.routes],
                  middleware=[Middleware(
                      AdminGuard, is_enabled=admin_pages.admin_enabled,
                      disabled=admin_pages.disabled_page,
                      unavailable=admin_pages.store_unavailable_page)]),
        ],
        lifespan=lifespan,
    )
    # Webhook POSTs first, then Starlette's stack (its error handler, the middleware declared
    # above, the router): its error handler wraps every send, and a webhook endpoint answers its
    # own failures (Endpoint). A middleware for webhooks too wraps WebhookRoutes here; one
    # declared above leaves them out. Built once, here: a later add_middleware raises rather
    # than passing the webhooks by silently.
    app.middleware_stack = WebhookRoutes(app.build_middleware_stack())
    app.state.settings = settings
    app.state.admin_token, app.state.admin_token_name = resolve_admin_token(settings)
    if settings.is_local_trial:  # at every start, as for the local Twilio token
        log.warning("IVR_ADMIN_TOKEN and IVR_ADMIN_USERS are not set: the admin API and page "
                    "accept the LOCAL admin token in %s (`ivr queues`, `ivr calls` and `ivr "
                    "flows`, run from this directory, use it). Set IVR_ADMIN_TOKEN or IVR_ADMIN_USERS "
                    "before anyone else can reach this server.", settings.local_admin_token_path)
    elif app.state.admin_token is None:
        log.warning("IVR_ADMIN_TOKEN is not set: the admin API is disabled%s",
                    " (the admin page signs in the users of IVR_ADMIN_USERS)"
                    if settings.admin_users else "")
    return app


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """200 while the store answers and flows are loaded; 503 `degraded` while Redis is unreachable
    or loading its data (calls still route, from the configuration in memory)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    store = services.store
    # PING catches a hung Redis and one loading its data, which the queue listener may not
    # have tried yet (it backs off while Redis is away).
    health = await store.health(READY_PING_TIMEOUT)
    flows = services.flows
    ready = health == "ok" and len(flows.flows) > 0
    body = {"status": "ready" if ready else "degraded", "store": health,
            "flows": len(flows.flows), "flow_version": flows.version,
            "queues": len(store.queue_names()),
            # Which process answered: a reload (SIGHUP) replaces them, `ivr serve` stays.
            "pid": os.getpid()}
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    # Summing every worker's files is disk I/O: off the event loop that answers calls.
    body = await run_in_threadpool(exposition) if MULTIPROCESS_DIR else exposition()
    return Response(body, media_type=CONTENT_TYPE)


Started = TypeVar("Started")


class StartupError(Exception):
    """The configuration cannot serve calls; the message says what to fix."""


async def open_store(settings: Settings, *, compare_draft: bool = True
                     ) -> tuple[QueueStore, FlowSet]:
    """Connect to the store, seed it from the queues file if it is empty, and load the live
    flows version (in an empty store, the flow files, checked against the live queues and
    published as version 1). The caller owns the returned store and closes it."""
    return await _opened_store(settings, lambda flows, store: starting_flows(
        flows, store, flow_checks(settings), settings.flows_dir, compare_draft=compare_draft))


async def check_store(settings: Settings) -> None:
    """What `ivr serve` checks before its workers start: the store as open_store opens it, but
    the live flows version, which each worker loads, is not loaded (ivr.flow_versions'
    check_starting_flows). Raises StartupError."""
    store, _ = await _opened_store(settings, lambda flows, store: check_starting_flows(
        flows, store, flow_checks(settings), settings.flows_dir))
    await store.close()


async def _opened_store(settings: Settings,
                        start: Callable[[FlowStore, QueueStore], Awaitable[Started]]
                        ) -> tuple[QueueStore, Started]:
    if settings.redis_url is None:
        raise StartupError("IVR_REDIS_URL is not set: run `ivr serve`, which starts the embedded "
                           "Redis when no URL is given")
    try:
        queue_config = load_queue_file(settings.sip_config)
    except QueueConfigError as exc:
        raise StartupError(f"the queues file is broken:\n{exc}") from None
    store = QueueStore(connect(settings.redis_url), settings.retention())
    try:
        if await store.seed_queues(queue_config):
            log.info("seeded %d queues from %s", len(queue_config.queues), settings.sip_config)
        await store.refresh()
        flows = await start(FlowStore(store.redis, store.retention), store)
    except FlowLoadError as exc:
        await store.close()
        raise StartupError(f"the flows are broken:\n{exc}") from None
    except FlowsRefused as exc:
        await store.close()
        raise StartupError(str(exc)) from None
    except (RedisError, OSError) as exc:
        await store.close()
        where = without_credentials(settings.redis_url)
        # redis-py's MasterNotFoundError message is a page of the sentinels' client reprs.
        problem = ("no sentinel there answered with that master (check the sentinels' "
                   "addresses and the service name)") if isinstance(exc, MasterNotFoundError) \
            else exc
        raise StartupError(f"cannot use the Redis at {where}: {problem}") from None
    except BaseException:
        await store.close()
        raise
    return store, flows


def flow_checks(settings: Settings) -> FlowChecks:
    """What this process checks flows against, besides the queues."""
    return FlowChecks(secrets=settings.secrets, settings=settings.flow_settings())


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        try:
            # A draft that differs is for `ivr serve` to say, once (ivr.cli), not each worker
            # with a second flow set loaded for it.
            store, flows = await open_store(settings, compare_draft=False)
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            raise
        stack.push_async_callback(store.close)
        log.info("ready: flows version %d (%d flows), %d queues", flows.version,
                 len(flows.flows), len(store.queue_names()))
        assert settings.redis_url is not None  # open_store starts nothing without it
        pipeline = AutoPipeline(settings.redis_url)
        stack.push_async_callback(pipeline.close)  # the last writes
        upstreams = Upstreams(RedisSharedAnswers(pipeline))
        cache_purges = FetchCachePurges(store.redis, upstreams, store.retention)
        store.follow(cache_purges)
        flow_store = FlowStore(store.redis, store.retention)
        live_flows = LiveFlows(flow_store, flow_checks(settings), flows)
        store.follow(live_flows)
        await store.start()
        http = _http_client(settings)
        stack.push_async_callback(http.aclose)
        traces = CallTraces(store.redis, settings.redis_url, settings.trace_max_entries,
                            settings.trace_hours)
        traces.start()
        stack.push_async_callback(traces.close)  # before the store closes: a last write
        stack.callback(process_exited, os.getpid())
        if settings.twilio_auth_token is None:  # at every start: real webhooks are refused
            log.warning("TWILIO_AUTH_TOKEN is not set: webhooks are checked against the LOCAL "
                        "token in %s. Only `ivr call` test calls will be accepted; set "
                        "TWILIO_AUTH_TOKEN before pointing Twilio here.",
                        settings.local_token_path)
        if settings.loyalty_api_url is None:
            log.warning("IVR_LOYALTY_API_URL is not set: loyalty lookups take their error exit")
        conversations = Conversations(
            store.redis, pipeline, timedelta(days=settings.contact_memory_days))
        stack.push_async_callback(conversations.writes.close)  # before the pipeline closes
        app.state.services = Services(
            live_flows=live_flows,
            flow_store=flow_store,
            flow_checks=flow_checks(settings),
            store=store,
            sessions=Sessions(pipeline),
            conversations=conversations,
            cache_purges=cache_purges,
            traces=traces,
            verifier=WebhookVerifier(resolve_auth_token(settings), settings.public_url),
            urls=CallbackUrls(settings.public_url or ""),
            surroundings=Surroundings(settings.flow_settings(), settings.flow_secrets(), http,
                                      settings.decision_deadline, upstreams),
            hold=HoldPolicy(settings.hold_after, settings.hold_prompt),
            max_body_bytes=settings.max_body_bytes,
        )
        # What startup built (modules, flows, clients) lives as long as the process: out of the
        # cyclic GC's sight, a full collection no longer walks it (bench/README.md, ivr/app.py).
        gc.freeze()
        stack.callback(gc.unfreeze)
        # Memory is freed by reference counting; the cyclic GC only finds cycles, which a call
        # seldom makes. At the default threshold it ran every ten calls or so, and the objects of
        # the 64 calls in flight outlived enough young collections to be promoted, which set off
        # full collections, a measurable share of a call's CPU (bench/README.md, ivr/app.py).
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
        stack.callback(gc.set_threshold, *thresholds)
        # Serving: log lines written together, off the webhooks' path; all written, and lines
        # written as they come again, once drained (bench/README.md, ivr/logs.py).
        stack.enter_context(batched_lines())
        yield
        # Before the stores close: a held call's decision is owed to its redirect.
        await app.state.services.drain(settings.decision_deadline + DRAIN_MARGIN)


def _http_client(settings: Settings) -> AiohttpClient:
    # One ClientSession for the process, closed with the lifespan (why aiohttp: bench/README.md).
    return AiohttpClient(max_connections=settings.http_max_connections)
