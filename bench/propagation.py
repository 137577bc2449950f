"""Benchmark what an admin change costs as the queues grow: PATCH latency, and webhook latency
while a stream of PATCHes runs, at each number of queues asked for.

For each count, on 127.0.0.1 and free ports: the fake loyalty API and `ivr serve` (embedded Redis
in a temporary directory, seeded with that many queues, `--workers` processes, so that other
processes follow each change too). Webhooks for one repeated caller are posted one after another,
first alone, then while another thread PATCHes the queues, `--rate` a second (each PATCH a new
SIP URI, round the queues); every answer's route is checked. Prints p50 and p99 of each, and
then the p50 of the queue list (every queue, a page, a search: an older server answers every
queue to each). Run by
hand (figures in bench/README.md); everything started is stopped.

    python3 bench/propagation.py [--queues 3,1000] [--seconds 10] [--workers 2] [--rate 20]
                                 [--code DIR]   # the ivr package measured (default: this tree)
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from bodies import call_params
from procs import Processes, free_ports, wait_http
from run import BENCH, REPO, server_env
from twilio.request_validator import RequestValidator

CALLER = "+15550100001"
SHIPPED = ("gold", "platinum", "standard")
REFERENCE_FLOW = "loyalty_routing.yaml"


def queues_file(path: Path, count: int) -> None:
    """`count` queues: the shipped three first (the reference flow routes to them)."""
    names = [*SHIPPED, *(f"team-{i:04d}" for i in range(count - len(SHIPPED)))][:count]
    queues = {name: {"sip_uri": f"sip:{name}@queues.example.com"} for name in names}
    path.write_text(yaml.safe_dump({"queues": queues}), encoding="utf-8")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def webhooks(url: str, token: str, stop: threading.Event) -> list[float]:
    """Seconds each webhook took, posted one after another until `stop`."""
    validator = RequestValidator(token)
    took = []
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            sid = f"CA{secrets.token_hex(16)}"
            params = call_params(CALLER, sid)
            headers = {"X-Twilio-Signature": validator.compute_signature(url, params),
                       "I-Twilio-Idempotency-Token": f"{sid}-1"}
            start = time.perf_counter()
            answer = client.post(url, data=params, headers=headers)
            took.append(time.perf_counter() - start)
            if answer.status_code != 200 or "<Sip>" not in answer.text:
                raise SystemExit(f"webhook answered {answer.status_code}: {answer.text[:200]}")
    return took


def patches(url: str, token: str, names: list[str], rate: float,
            stop: threading.Event) -> list[float]:
    """Seconds each PATCH took, `rate` a second round `names` until `stop`."""
    took = []
    due = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        turn = 0
        while not stop.is_set():
            name = names[turn % len(names)]
            start = time.perf_counter()
            answer = client.patch(f"/admin/api/queues/{name}",
                                  json={"sip_uri": f"sip:{name}-{turn}@queues.example.com"})
            took.append(time.perf_counter() - start)
            if answer.status_code != 200:
                raise SystemExit(f"PATCH answered {answer.status_code}: {answer.text[:200]}")
            turn += 1
            due += 1 / rate
            stop.wait(max(0.0, due - time.perf_counter()))
    return took


def list_latencies(url: str, token: str, times: int) -> dict[str, float]:
    """p50 ms of GET /admin/api/queues: every queue, a page of 50, and a search."""
    asks = {"every queue": {}, "a page of 50": {"offset": "500", "limit": "50"},
            "a search": {"q": "team-09", "limit": "50"}}
    medians = {}
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        for what, params in asks.items():
            took = []
            for _ in range(times):
                start = time.perf_counter()
                client.get("/admin/api/queues", params=params).raise_for_status()
                took.append(time.perf_counter() - start)
            medians[what] = percentile(took, 0.5)
    return medians


def run_for(seconds: float, *jobs: object) -> list[list[float]]:
    """Each job (a function of a stop event) in a thread of its own, for `seconds`."""
    stop = threading.Event()
    results: list[list[float]] = [[] for _ in jobs]

    def runner(index: int, job: object) -> None:
        results[index] = job(stop)  # type: ignore[operator]

    threads = [threading.Thread(target=runner, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return results


def measure(count: int, opts: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ivr-propagation-") as tmp_dir, \
            Processes(Path(tmp_dir)) as procs:
        tmp = Path(tmp_dir)
        queues_file(tmp / "queues.yaml", count)
        api_port, ivr_port = free_ports(2)
        token, admin = secrets.token_hex(16), secrets.token_hex(16)
        api_url, ivr_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ivr_port}"
        api = procs.start("loyalty-api", [sys.executable, str(BENCH / "loyalty_api.py"),
                                          "--port", str(api_port), "--latency-ms", "20"])
        env = server_env(tmp, api_url, token, {})  # the defaults
        (tmp / "flows").mkdir()  # the reference flow alone: it routes to the shipped three
        (tmp / "flows" / REFERENCE_FLOW).write_bytes((REPO / "flows" / REFERENCE_FLOW).read_bytes())
        env.update({"IVR_SIP_CONFIG": str(tmp / "queues.yaml"), "IVR_ADMIN_TOKEN": admin,
                    "IVR_FLOWS_DIR": str(tmp / "flows"), "PYTHONPATH": str(opts.code)})
        ivr = procs.start("ivr-serve", [sys.executable, "-m", "ivr", "serve", "--port",
                                        str(ivr_port), "--workers", str(opts.workers)],
                          env=env, cwd=tmp)
        wait_http(api, f"{api_url}/stats")
        wait_http(ivr, f"{ivr_url}/healthz")
        voice = f"{ivr_url}/twilio/voice"
        run_for(2, lambda stop: webhooks(voice, token, stop))  # warm: the caller's lookup cached
        [alone] = run_for(opts.seconds, lambda stop: webhooks(voice, token, stop))
        names = [f"team-{i:04d}" for i in range(count - len(SHIPPED))] or ["standard"]
        during, patched = run_for(opts.seconds, lambda stop: webhooks(voice, token, stop),
                                  lambda stop: patches(ivr_url, admin, names, opts.rate, stop))
        print(f"{count:>6} queues  PATCH p50 {percentile(patched, 0.5):6.1f} ms  "
              f"p99 {percentile(patched, 0.99):6.1f} ms ({len(patched)} PATCHes)  |  "
              f"webhook p50 {percentile(alone, 0.5):5.1f} ms alone, "
              f"{percentile(during, 0.5):5.1f} ms during PATCHes (p99 "
              f"{percentile(alone, 0.99):5.1f} / {percentile(during, 0.99):5.1f} ms, "
              f"{statistics.fmean(during) * 1000:5.1f} mean)", flush=True)
        lists = list_latencies(ivr_url, admin, opts.lists)
        print(" " * 14 + "GET /admin/api/queues p50: " + ", ".join(
            f"{what} {ms:.1f} ms" for what, ms in lists.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queues", default="3,1000",
                        help="the numbers of queues to measure at, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=20.0, help="PATCHes a second")
    parser.add_argument("--lists", type=int, default=30, help="GETs of each kind of list")
    parser.add_argument("--code", type=Path, default=REPO,
                        help="the directory holding the ivr package to measure")
    opts = parser.parse_args()
    print(f"ivr from {opts.code.resolve()}, {opts.workers} workers, {opts.rate:g} PATCHes/s, "
          f"{opts.seconds:g} s each")
    for count in (int(n) for n in opts.queues.split(",")):
        measure(count, opts)


if __name__ == "__main__":
    main()
