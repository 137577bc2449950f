"""Admin history at scale: what reading a queue's history, the flows versions and the audit log
costs with 10,000 of each, and how long a webhook waits meanwhile on the same worker (issue 18,
item 2). Not a test: run it by hand.

    python3 bench/admin_history.py                       # 10,000 versions, all kept
    python3 bench/admin_history.py --repo /tmp/old-ivr   # another checkout's code, same data

One `ivr serve` (one worker, IVR_LOG_LEVEL=warning) on an embedded Redis of the bench's own,
the benchmark's loyalty API at 20 ms. The data: 10,000 versions of queue gold written through
the queue store (so 10,000 audit entries), and 10,000 flows versions (tiny files, written
with a pipeline, then the shipped flows published as the live one). Retention is set above
those counts, the worst case; `--kept` sets IVR_QUEUE_VERSIONS_KEPT and the others.

For each admin read: its latency (median of 20, one at a time) and size; then webhooks at
about 50 a second, alone and while a client reads that admin URL back to back for 3 s: the
webhooks' p50, p99 and worst latency. Every process it starts is stopped by its id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TOKEN = "t" * 32
ADMIN = "bench-admin-token-0123456789abcdef"
VERSIONS = 10_000
READS = ["/admin/api/queues/gold/history", "/admin/api/queues/gold/history?limit=500",
         "/admin/api/flows/versions", "/admin/api/audit?limit=1000", "/admin/queues/gold",
         "/admin/flows", "/admin/audit", "/admin/audit?offset=9000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=VERSIONS)
    parser.add_argument("--kept", type=int, default=100_000,
                        help="IVR_QUEUE_VERSIONS_KEPT, IVR_FLOW_VERSIONS_KEPT and "
                        "IVR_AUDIT_ENTRIES_KEPT (default: all kept)")
    parser.add_argument("--repo", type=Path, default=BENCH.parent,
                        help="the checkout whose ivr/ serves (default this one)")
    opts = parser.parse_args()
    sys.path[:0] = [str(BENCH.parent), str(BENCH)]
    import httpx
    from procs import Processes, free_ports, wait_http

    from ivr.redis.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="ivr-admin-bench-") as tmp:
        redis = EmbeddedRedis(Path(tmp))
        try:
            redis_url = redis.start()
            with Processes(Path(tmp)) as procs:
                api_port, port = free_ports(2)
                api = procs.start("loyalty-api", [sys.executable, str(BENCH / "loyalty_api.py"),
                                                  "--port", str(api_port), "--latency-ms", "20"])
                wait_http(api, f"http://127.0.0.1:{api_port}/stats")
                kept = str(opts.kept)
                env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(opts.repo.resolve()),
                       "TWILIO_AUTH_TOKEN": TOKEN, "IVR_REDIS_URL": redis_url,
                       "IVR_ADMIN_TOKEN": ADMIN, "IVR_LOG_LEVEL": "warning",
                       "IVR_LOYALTY_API_URL": f"http://127.0.0.1:{api_port}",
                       "IVR_DATA_DIR": str(Path(tmp) / "var"),
                       "IVR_FLOWS_DIR": str(opts.repo / "flows"),
                       "IVR_SIP_CONFIG": str(opts.repo / "sip_config" / "queues.yaml"),
                       "IVR_QUEUE_VERSIONS_KEPT": kept, "IVR_FLOW_VERSIONS_KEPT": kept,
                       "IVR_AUDIT_ENTRIES_KEPT": kept}
                server = procs.start("ivr-serve", [sys.executable, "-m", "ivr", "serve",
                                                   "--port", str(port)], env=env,
                                     cwd=opts.repo)
                url = f"http://127.0.0.1:{port}"
                wait_http(server, url + "/readyz")
                started = time.monotonic()
                asyncio.run(build(redis_url, opts.versions, opts.kept, opts.repo))
                print(f"built {opts.versions:,} queue and flows versions in "
                      f"{time.monotonic() - started:.0f} s; Redis: {sizes(redis_url)}")
                time.sleep(2)  # the server catches up with the last publish
                with httpx.Client(base_url=url, timeout=30) as admin:
                    sign_in(admin)
                    report(url, admin)
        finally:
            redis.stop()


async def build(redis_url: str, count: int, kept: int, repo: Path) -> None:
    """`count` versions of gold through the store; `count` flows versions by pipeline (tiny
    files), then the shipped flows published through the store as the live one."""
    from ivr.flows.loader import read_flow_texts
    from ivr.queues import Queue
    from ivr.redis.client import connect
    from ivr.redis.flow_store import COUNTER_KEY, FILES_KEY, VERSIONS_KEY, FlowStore
    from ivr.redis.queue_store import QueueStore
    from ivr.redis.retention import Retention

    retention = Retention(kept, kept, kept)
    queues = QueueStore(connect(redis_url), retention)
    try:
        for n in range(count - 1):
            await queues.put("gold", Queue(sip_uri=f"sip:gold-{n}@pbx.example.com",
                                           display_name="Gold"), "bench")
        flows = FlowStore(queues.redis, retention)
        first = int(await queues.redis.get(COUNTER_KEY) or 0) + 1
        async with queues.redis.pipeline(transaction=False) as pipe:
            for version in range(first, first + count - 1):
                pipe.hset(VERSIONS_KEY, str(version), json.dumps({
                    "version": version, "at": "2026-01-01T00:00:00.000+00:00", "who": "bench",
                    "message": f"change {version}", "hash": f"{version:064x}",
                    "files": ["a.yaml"], "action": "publish", "rolled_back_to": None}))
                pipe.hset(FILES_KEY, str(version), json.dumps({"a.yaml": f"# {version}\n"}))
            pipe.set(COUNTER_KEY, first + count - 2)
            await pipe.execute()
        files = read_flow_texts(repo / "flows")
        await flows.publish(files, "bench", "the shipped flows, live")
    finally:
        await queues.close()


def sizes(redis_url: str) -> str:
    import redis

    from ivr.redis.flow_store import VERSIONS_KEY
    from ivr.redis.queue_store import AUDIT_KEY, history_key

    with redis.Redis.from_url(redis_url) as client:
        parts = []
        for key, count in ((history_key("gold"), client.hlen(history_key("gold"))),
                           (AUDIT_KEY, client.llen(AUDIT_KEY)),
                           (VERSIONS_KEY, client.hlen(VERSIONS_KEY))):
            used = client.memory_usage(key, samples=0) or 0
            parts.append(f"{key} {count:,} entries, {used / 1e6:.1f} MB "
                         f"({used / max(count, 1):.0f} B each)")
        return "; ".join(parts)


def sign_in(admin: Any) -> None:
    """The admin page's sign-in with the token (its double-submit CSRF: the cookie and form)."""
    form = admin.get("/admin/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None, "no sign-in form"
    answer = admin.post("/admin/login", data={"csrf": csrf.group(1), "user": "",
                                              "password": ADMIN})
    assert answer.status_code in (200, 303), answer.status_code
    admin.headers["Authorization"] = f"Bearer {ADMIN}"


def report(url: str, admin: Any) -> None:
    print(f"{'read':44} {'median ms':>9} {'KB':>8}  webhook p50 / p99 / max ms while read")
    alone = webhooks_while(url, None)
    print(f"{'(no admin read)':44} {'':>9} {'':>8}  {alone}")
    for path in READS:
        times, size = [], 0
        for _ in range(20):
            began = time.perf_counter()
            response = admin.get(path)
            times.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, (path, response.status_code)
            size = len(response.content)
        print(f"{path:44} {statistics.median(times):9.1f} {size / 1000:8.1f}  "
              f"{webhooks_while(url, lambda: admin.get(path))}")


def webhooks_while(url: str, read: Any) -> str:
    """Webhooks at about 50 a second for 3 s, while `read` runs back to back (None: alone)."""
    import httpx
    from bodies import call_params
    from twilio.request_validator import RequestValidator

    stop = threading.Event()
    reader = threading.Thread(target=lambda: [read() for _ in iter(stop.is_set, True)])
    if read is not None:
        reader.start()
    validator, latencies = RequestValidator(TOKEN), []
    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 3
        n = 0
        while time.monotonic() < deadline:
            n += 1
            params = call_params(f"+1555{n % 10_000:07d}", f"CA{n:032x}")
            signature = validator.compute_signature(url + "/twilio/voice", params)
            began = time.perf_counter()
            client.post(url + "/twilio/voice", data=params,
                        headers={"X-Twilio-Signature": signature})
            latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(0.02)
    stop.set()
    if read is not None:
        reader.join()
    latencies.sort()
    return (f"{statistics.median(latencies):.1f} / "
            f"{latencies[int(len(latencies) * 0.99)]:.1f} / {latencies[-1]:.1f}")


if __name__ == "__main__":
    main()
