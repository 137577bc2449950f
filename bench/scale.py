"""The scale bench (issue 18): what the server costs as its data grows. Run by hand, not in the
suite; everything runs on 127.0.0.1, free ports and temporary directories, and every process
started is stopped.

    python3 bench/scale.py bytes   [--contacts 200000]       # (d) Redis bytes per caller
    python3 bench/scale.py startup [--millions 0 1 5 10]     # (a) ivr serve against N million
    python3 bench/scale.py admin   [--versions 10000 --queues 1000 --seconds 5]   # (b) and (c)

bytes: contacts written with the server's own commands (Conversations.remember_commands) into a
fresh embedded Redis; used_memory's growth a contact (key, hash, expiry entry, the dicts' slots),
MEMORY USAGE of one, and the AOF's bytes a contact as appended and once rewritten.

startup: a data directory holding N million contacts (pipelined into the embedded Redis binary,
the AOF then rewritten as a long-running server's is), then `ivr serve` on it, timed until
/readyz answers 200. Target: it starts on 10 million.

admin: 1,000 queues and 10,000 versions of `standard`, written through the queue store's own
write script (as the admin API writes them); then each admin page and API's latency, and a
webhook's p50/p99 (4 connections, repeated callers) alone and while one admin URL is read in a
loop. Target: a webhook's p99 does not double while any of them is read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import httpx  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from bodies import hot_callers, signed_slices, sip_elements  # noqa: E402
from procs import (  # noqa: E402
    Processes,
    Started,
    cpu_seconds,
    free_ports,
    process_tree,
    stop,
    system_busy_seconds,
    wait_http,
)
from run import code_version, server_env  # noqa: E402

from ivr.queues import Queue, load_queue_file  # noqa: E402
from ivr.redis import queue_store  # noqa: E402
from ivr.redis.autopipeline import AutoPipeline  # noqa: E402
from ivr.redis.conversations import Conversations  # noqa: E402
from ivr.redis.embedded import EmbeddedRedis  # noqa: E402

CHUNK = 20_000  # contacts a write to the socket
STARTUP_LIMIT = 600.0  # seconds: beyond this, `ivr serve` is said not to start
WEBHOOK_CONNECTIONS = 4


# --- contacts ---------------------------------------------------------------------------------

def number(index: int) -> str:
    return f"+1{2_000_000_000 + index}"  # E.164, 10 digits after +1, for up to 8 billion


def contact_template(fields: dict[str, str]) -> tuple[list[bytes], int]:
    """One contact's first visit as the server writes it, in RESP split around its number, and
    how many commands it is."""
    async def commands() -> list[tuple[Any, ...]]:
        conversations = Conversations(aioredis.Redis(), AutoPipeline("unix:///nonexistent"),
                                      timedelta(days=365))
        return conversations.remember_commands(number(0), fields, visit=True)

    written = asyncio.run(commands())
    return b"".join(_resp(command) for command in written).split(number(0).encode()), len(written)


def _resp(command: tuple[Any, ...]) -> bytes:
    parts = [str(arg).encode() for arg in command]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def write_contacts(socket_path: Path, first: int, count: int, fields: dict[str, str]) -> None:
    """Contacts `first` .. `first + count - 1`, pipelined over one socket; replies are drained
    by a thread as they come, and any error reply fails the run."""
    template, replies_each = contact_template(fields)
    expected = replies_each * count
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(socket_path))
    failure: list[bytes] = []

    def drain() -> None:
        seen = 0
        while seen < expected:
            data = sock.recv(1 << 20)
            if not data:
                failure.append(b"connection closed")
                return
            if b"-" in data:  # every reply here is an integer: a '-' is an error
                failure.append(data[:200])
                return
            seen += data.count(b"\r\n")

    reader = threading.Thread(target=drain)
    reader.start()
    for start in range(first, first + count, CHUNK):
        end = min(start + CHUNK, first + count)
        sock.sendall(b"".join(number(i).encode().join(template) for i in range(start, end)))
    reader.join()
    sock.close()
    if failure:
        raise RuntimeError(f"Redis refused a contact write: {failure[0]!r}")


def data_memory(client: redis.Redis) -> int:
    """used_memory without the clients' and the AOF's buffers, which a bulk write swells."""
    info = client.info("memory")
    return int(info["used_memory"] - info["mem_clients_normal"] - info["mem_aof_buffer"])


def aof_bytes(redis_dir: Path) -> int:
    return sum(p.stat().st_size for p in redis_dir.rglob("appendonly*") if p.is_file())


def held_rewrites(embedded: EmbeddedRedis) -> redis.Redis:
    """A client to `embedded`, which no longer rewrites its AOF by itself at each doubling while
    it is filled (each is a fork and a full write, beside the writes): one at the end."""
    client = redis.Redis(unix_socket_path=str(embedded.socket_path))
    client.config_set("auto-aof-rewrite-percentage", 0)
    return client


def rewrite_aof(client: redis.Redis) -> None:
    """The AOF rewritten whole (RDB preamble), as a long-running server's is; a rewrite that
    Redis began by itself during the writes is waited for, then made again."""
    wait_for_rewrite(client)
    try:
        client.bgrewriteaof()
    except redis.ResponseError:  # Redis began one meanwhile
        wait_for_rewrite(client)
        client.bgrewriteaof()
    wait_for_rewrite(client)


def wait_for_rewrite(client: redis.Redis) -> None:
    while True:
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.2)


def bytes_per_caller(opts: argparse.Namespace) -> list[str]:
    lines = [f"(d) Redis bytes a caller, {opts.contacts:,} contacts each "
             f"(Redis {{}}):"]
    note = ("prefers a callback after 6 pm; speaks French and Dutch; account under the company's "
            "name; billing questions to the account manager")
    kinds = {"visits only": {}, "+ usual_queue=standard": {"usual_queue": "standard"},
             f"+ a {len(note)}-byte note": {"note": note}}
    for kind, fields in kinds.items():
        with tempfile.TemporaryDirectory(prefix="ivr-scale-bytes-") as tmp:
            embedded = EmbeddedRedis(Path(tmp))
            embedded.start()
            try:
                client = held_rewrites(embedded)
                lines[0] = lines[0].format(client.info("server")["redis_version"])
                used = data_memory(client)
                aof = aof_bytes(embedded.data_dir)
                write_contacts(embedded.socket_path, 0, opts.contacts, fields)
                time.sleep(1)  # the AOF's buffer written, the dicts' rehashing done
                grown = (data_memory(client) - used) / opts.contacts
                usage = client.memory_usage(f"ivr:contact:{number(1)}")
                encoding = client.object("encoding", f"ivr:contact:{number(1)}").decode()
                appended = (aof_bytes(embedded.data_dir) - aof) / opts.contacts
                rewrite_aof(client)
                rewritten = aof_bytes(embedded.data_dir) / opts.contacts
                client.close()
            finally:
                embedded.stop()
        lines.append(
            f"  {kind:28s} {grown:6.1f} B a caller ({grown:.0f} MB a million), MEMORY USAGE "
            f"{usage} ({encoding}); AOF {appended:.0f} B a first visit, {rewritten:.0f} B "
            f"rewritten ({rewritten:.0f} MB a million)")
    return lines


# --- start-up ---------------------------------------------------------------------------------

def startup(opts: argparse.Namespace) -> list[str]:
    lines = ["(a) ivr serve's start-up against N million contacts (time until /readyz is 200):"]
    met = None
    for millions in opts.millions:
        count = int(millions * 1_000_000)
        with tempfile.TemporaryDirectory(prefix="ivr-scale-start-") as tmp_name:
            tmp = Path(tmp_name)
            made = time.monotonic()
            embedded = EmbeddedRedis(tmp / "ivr-data")
            embedded.start()
            try:
                client = held_rewrites(embedded)
                write_contacts(embedded.socket_path, 0, count, {})
                rewrite_aof(client)
                memory = client.info("memory")["used_memory"]
                client.close()
            finally:
                embedded.stop(timeout=120)
            aof = aof_bytes(tmp / "ivr-data" / "redis")
            made = time.monotonic() - made
            took, outcome = time_startup(tmp)
            started = outcome == "ready"
            if millions == max(opts.millions):
                met = started
            lines.append(f"  {millions:g} million: {outcome} after {took:.1f} s (Redis "
                         f"{memory / 2**20:,.0f} MiB, AOF {aof / 2**20:,.0f} MiB; made in "
                         f"{made:.0f} s)")
    lines.append(f"  target: ivr serve starts on {max(opts.millions):g} million contacts: "
                 f"{'met' if met else 'MISSED'}")
    return lines


def time_startup(tmp: Path) -> tuple[float, str]:
    """Seconds from `ivr serve`'s start until /readyz is 200, and "ready" or why it is not."""
    (port,) = free_ports(1)
    env = server_env(tmp, "http://127.0.0.1:9", secrets.token_hex(16), {})
    with Processes(tmp) as procs:
        began = time.monotonic()
        server = procs.start("ivr-serve", [sys.executable, "-m", "ivr", "serve", "--port",
                                           str(port)], env=env, cwd=tmp)
        try:
            wait_http(server, f"http://127.0.0.1:{port}/readyz", timeout=STARTUP_LIMIT)
        except RuntimeError:
            last = server.tail(5).strip().splitlines()
            return time.monotonic() - began, "FAILED (" + (last[-1] if last else "no log") + ")"
        took = time.monotonic() - began
        stop(server, grace=120)
    return took, "ready"


# --- admin at scale, and webhooks meanwhile ---------------------------------------------------

def make_queues(redis_dir: Path, queues: int, versions: int) -> None:
    """`queues` queues and `versions` versions of `standard`, through the store's write script
    (what every admin write runs), pipelined."""
    embedded = EmbeddedRedis(redis_dir)
    embedded.start()
    try:
        async def seed() -> None:
            client = aioredis.Redis(unix_socket_path=str(embedded.socket_path),
                                    decode_responses=True)
            await queue_store.QueueStore(client).seed_queues(
                load_queue_file(REPO / "sip_config" / "queues.yaml"))
            await client.aclose()

        asyncio.run(seed())
        client = redis.Redis(unix_socket_path=str(embedded.socket_path))
        write = client.register_script(queue_store._WRITE_SCRIPT)  # the admin API's writes
        pipe = client.pipeline(transaction=False)
        changes = [(f"bench{i:04d}", Queue(sip_uri=f"sip:bench{i}@queues.example.com",
                                           display_name=f"Bench queue {i}"))
                   for i in range(queues)]
        changes += [("standard", Queue(sip_uri="sip:standard@queues.example.com",
                                       message_to="+15550100103",
                                       display_name=f"Everyone else ({i % 2})"))
                    for i in range(versions)]
        for index, (name, queue) in enumerate(changes, 1):
            at = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime())
            entry = {"at": at, "who": "bench", "action": "update", "queue": name}
            write(keys=[queue_store.QUEUES_KEY, queue_store.history_key(name),
                        queue_store.counter_key(name), queue_store.AUDIT_KEY,
                        queue_store.CONFIG_VERSION_KEY],
                  args=[name, queue_store._record_json(queue, "bench", at), "", "",
                        json.dumps(entry), queue_store.CHANGED_CHANNEL,
                        # no delete guard; every version and audit entry kept (the server runs
                        # with IVR_QUEUE_VERSIONS_KEPT above them too), no age limit
                        "", str(versions + 1), str(AUDIT_KEPT), ""], client=pipe)
            if index % 500 == 0:
                pipe.execute()
        pipe.execute()
        client.close()
    finally:
        embedded.stop(timeout=60)


AUDIT_KEPT = 1_000_000

ADMIN_READS = {
    "queue page": "/admin/queues/standard",
    "history API": "/admin/api/queues/standard/history?limit=50",
    "queues API": "/admin/api/queues?limit=50",
    "queues page": "/admin/",
    "audit API": "/admin/api/audit?limit=100",
    "PATCH": "PATCH /admin/api/queues/standard",
}


def admin_client(base: str, token: str) -> httpx.Client:
    """A client signed in to the API (bearer) and to the page (with the token, as a browser)."""
    client = httpx.Client(base_url=base, timeout=60,
                          headers={"Authorization": f"Bearer {token}"})
    client.get("/admin/login")
    csrf = next(value for name, value in client.cookies.items() if "login" in name.lower())
    client.post("/admin/login", data={"csrf": csrf, "user": "", "password": token})
    return client


def admin_request(client: httpx.Client, what: str, turn: int) -> httpx.Response:
    if what.startswith("PATCH "):
        return client.patch(what.removeprefix("PATCH "),
                            json={"display_name": f"Everyone else (patched {turn % 2})"})
    return client.get(what)


def read_in_a_loop(base: str, token: str, what: str, ready: Any, stop_event: Any,
                   results: Any) -> None:
    """In a process of its own: `what` read (or patched) over and over until told to stop."""
    client = admin_client(base, token)
    ready.set()
    took, turn = [], 0
    while not stop_event.is_set():
        began = time.perf_counter()
        response = admin_request(client, what, turn)
        took.append(time.perf_counter() - began)
        if response.status_code >= 400:
            results.put(("error", f"{what}: {response.status_code} {response.text[:100]}"))
            return
        turn += 1
    results.put(("ok", took))


def webhook_requests(base: str, token: str) -> list[bytes]:
    url = f"{base}/twilio/voice"
    sips = sip_elements(REPO / "sip_config" / "queues.yaml")
    host = base.removeprefix("http://")
    requests = []
    for piece in signed_slices(url, token, hot_callers, 3, 2000, 1, sips):
        for body, signature, idempotency in piece.hooks:
            requests.append(
                (f"POST /twilio/voice HTTP/1.1\r\nHost: {host}\r\n"
                 f"Content-Type: application/x-www-form-urlencoded\r\n"
                 f"X-Twilio-Signature: {signature}\r\nI-Twilio-Idempotency-Token: {idempotency}"
                 f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    return requests


class OthersCpu:
    """CPU that processes outside the bench used meanwhile, in % of one core: above about 20%
    on 2 cores, latencies come out high (bench/README.md)."""

    def __init__(self, ours: list[int]) -> None:
        self.ours = ours
        self.began = time.monotonic()
        self.busy = system_busy_seconds() - cpu_seconds(self._tree())

    def _tree(self) -> list[int]:
        return [pid for root in self.ours for pid in process_tree(root)]

    def percent(self) -> float:
        busy = system_busy_seconds() - cpu_seconds(self._tree()) - self.busy
        return 100 * busy / (time.monotonic() - self.began)


async def webhook_latencies(port: int, requests: list[bytes], seconds: float) -> list[float]:
    """Closed loop on WEBHOOK_CONNECTIONS keep-alive connections for `seconds`: each answer's
    time, in seconds. Any answer but 200 fails the run."""
    took: list[float] = []
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = offset
        while loop.time() < until:
            began = time.perf_counter()
            writer.write(requests[index % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"webhook answered {head[:60]!r}")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            took.append(time.perf_counter() - began)
            index += WEBHOOK_CONNECTIONS
        writer.close()

    await asyncio.gather(*(connection(i) for i in range(WEBHOOK_CONNECTIONS)))
    return took


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def admin(opts: argparse.Namespace) -> list[str]:
    lines = [f"(b) admin latency with {opts.queues:,} queues and {opts.versions:,} versions of "
             "one (median / max of 5, one at a time):"]
    with tempfile.TemporaryDirectory(prefix="ivr-scale-admin-") as tmp_name:
        tmp = Path(tmp_name)
        made = time.monotonic()
        make_queues(tmp / "ivr-data", opts.queues, opts.versions)
        lines[0] += f" [made in {time.monotonic() - made:.0f} s]"
        api_port, port = free_ports(2)
        token, admin_token = secrets.token_hex(16), secrets.token_hex(16)
        env = server_env(tmp, f"http://127.0.0.1:{api_port}", token, {})  # the defaults
        env["IVR_ADMIN_TOKEN"] = admin_token
        # Every version written kept, the bound's worst case: reads must not grow with it.
        env["IVR_QUEUE_VERSIONS_KEPT"] = str(opts.versions + 1)
        env["IVR_AUDIT_ENTRIES_KEPT"] = str(AUDIT_KEPT)
        base = f"http://127.0.0.1:{port}"
        with Processes(tmp) as procs:
            api = procs.start("loyalty-api", [sys.executable, str(BENCH / "loyalty_api.py"),
                                              "--port", str(api_port), "--latency-ms", "20"])
            server = procs.start("ivr-serve", [sys.executable, "-m", "ivr", "serve", "--port",
                                               str(port)], env=env, cwd=tmp)
            wait_http(api, f"http://127.0.0.1:{api_port}/stats")
            wait_http(server, f"{base}/readyz", timeout=STARTUP_LIMIT)
            lines += admin_latencies(base, admin_token)
            lines += webhooks_while_reading(base, port, token, admin_token, opts.seconds,
                                            [server, api])
    return lines


def admin_latencies(base: str, token: str) -> list[str]:
    lines = []
    client = admin_client(base, token)
    try:
        for name, what in ADMIN_READS.items():
            took, size = [], 0
            for turn in range(5):
                began = time.perf_counter()
                response = admin_request(client, what, turn)
                took.append(time.perf_counter() - began)
                response.raise_for_status()
                size = len(response.content)
            lines.append(f"  {name:12s} {statistics.median(took) * 1000:8.1f} ms median, "
                         f"{max(took) * 1000:8.1f} ms max, {size / 1024:,.0f} KiB  ({what})")
    finally:
        client.close()
    return lines


def webhooks_while_reading(base: str, port: int, token: str, admin_token: str, seconds: float,
                           started: list[Started]) -> list[str]:
    """`started`: ivr serve, then the loyalty API."""
    server = started[0]
    requests = webhook_requests(base, token)
    asyncio.run(webhook_latencies(port, requests, 1.0))  # warm: the lookups cached
    ours = [process.pid for process in started] + [os.getpid()]  # the reader: a child
    others = OthersCpu(ours)
    alone = asyncio.run(webhook_latencies(port, requests, seconds))
    base_p99 = percentile(alone, 0.99)
    lines = [f"(c) webhook latency, {WEBHOOK_CONNECTIONS} connections, repeated callers, "
             f"{seconds:g} s each:",
             f"  alone                   p50 {percentile(alone, 0.5) * 1000:6.1f} ms, p99 "
             f"{base_p99 * 1000:6.1f} ms ({len(alone) / seconds:,.0f} req/s; others' CPU "
             f"{others.percent():.0f}%)"]
    all_met = True
    context = multiprocessing.get_context("fork")
    for name, what in ADMIN_READS.items():
        ready, stop_event, results = context.Event(), context.Event(), context.Queue()
        reader = context.Process(target=read_in_a_loop,
                                 args=(base, admin_token, what, ready, stop_event, results))
        reader.start()
        try:
            ready.wait(30)
            others = OthersCpu(ours)
            during = asyncio.run(webhook_latencies(port, requests, seconds))
            busy = others.percent()
        finally:
            stop_event.set()
            status, admin_took = results.get(timeout=120)
            reader.join(30)
        if status == "error":
            raise RuntimeError(admin_took)
        p99 = percentile(during, 0.99)
        met = p99 <= 2 * base_p99
        all_met &= met
        lines.append(f"  while {name:12s}    p50 {percentile(during, 0.5) * 1000:6.1f} ms, p99 "
                     f"{p99 * 1000:6.1f} ms ({len(during) / seconds:,.0f} req/s; the admin "
                     f"read {len(admin_took)} times, p50 "
                     f"{percentile(admin_took, 0.5) * 1000:.0f} ms; others' CPU {busy:.0f}%): "
                     f"{'met' if met else 'MISSED'}")
    lines.append("  target: a webhook's p99 does not double while any admin page or API is read: "
                 f"{'met' if all_met else 'MISSED'}")
    if server.process.poll() is not None:
        raise RuntimeError(f"ivr serve exited:\n{server.tail()}")
    return lines


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    part = parts.add_parser("bytes", help="(d) Redis bytes a caller")
    part.add_argument("--contacts", type=int, default=200_000)
    part = parts.add_parser("startup", help="(a) ivr serve's start-up against N million contacts")
    part.add_argument("--millions", type=float, nargs="+", default=[0, 1, 5, 10])
    part = parts.add_parser("admin", help="(b) admin latency and (c) webhooks meanwhile")
    part.add_argument("--versions", type=int, default=10_000)
    part.add_argument("--queues", type=int, default=1_000)
    part.add_argument("--seconds", type=float, default=5.0, help="each webhook measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    part = {"bytes": bytes_per_caller, "startup": startup, "admin": admin}[opts.part]
    began = time.monotonic()
    lines = part(opts)
    print("\n".join(lines))
    print(f"(took {time.monotonic() - began:.0f} s; code {code_version()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
