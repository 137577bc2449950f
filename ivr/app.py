"""The Starlette application: routes, and the lifespan that builds what every request shares."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ivr.channels.webhook import MESSAGING, VOICE, Services, handle_webhook
from ivr.embedded_redis import EmbeddedRedis
from ivr.flows.loader import FlowLoadError, load_flows
from ivr.logs import configure_logging
from ivr.queues import QueueConfigError, load_queue_file
from ivr.settings import Settings
from ivr.store import Store, connect
from ivr.twilio_security import WebhookVerifier, resolve_auth_token

log = logging.getLogger("ivr.app")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = Starlette(
        routes=[
            Route("/twilio/voice", voice_webhook, methods=["POST"]),
            Route("/twilio/messaging", messaging_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


async def voice_webhook(request: Request) -> Response:
    return await handle_webhook(request, VOICE)


async def messaging_webhook(request: Request) -> Response:
    return await handle_webhook(request, MESSAGING)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        try:
            queue_config = load_queue_file(settings.sip_config)
        except QueueConfigError as exc:
            log.error("cannot start, the queues file is broken:\n%s", exc)
            raise
        redis_url = settings.redis_url
        if redis_url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            redis_url = embedded.start()
            stack.callback(embedded.stop)
        store = Store(connect(redis_url))
        stack.push_async_callback(store.close)
        if await store.seed_queues(queue_config):
            log.info("seeded %d queues from %s", len(queue_config.queues), settings.sip_config)
        queues = await store.load_queues()
        try:
            flows = load_flows(settings.flows_dir, queue_names=queues)
        except FlowLoadError as exc:
            log.error("cannot start, the flows are broken:\n%s", exc)
            raise
        http = _http_client(settings)
        stack.push_async_callback(http.aclose)
        if settings.loyalty_api_url is None:
            log.warning("IVR_LOYALTY_API_URL is not set: loyalty lookups take their error exit")
        app.state.services = Services(
            flows=flows,
            store=store,
            http=http,
            verifier=WebhookVerifier(resolve_auth_token(settings), settings.public_url),
            flow_settings=_flow_settings(settings),
            decision_deadline=settings.decision_deadline,
            max_body_bytes=settings.max_body_bytes,
        )
        log.info("ready: %d flows, %d queues", len(flows.flows), len(queues))
        yield


def _http_client(settings: Settings) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_connections,
        keepalive_expiry=30,
    )
    # aiohttp's pool under httpx's API: several times the throughput of httpx's own transport.
    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits), follow_redirects=False)


def _flow_settings(settings: Settings) -> dict[str, str | None]:
    """The only settings a flow can read: no other secret is ever in a template's reach."""
    token = settings.loyalty_api_token
    return {
        "loyalty_api_url": settings.loyalty_api_url.rstrip("/") if settings.loyalty_api_url else None,
        "loyalty_api_token": token.get_secret_value() if token else None,
    }
