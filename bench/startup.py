"""How long `ivr serve` takes to start with many flows (run by hand; figures in bench/README.md).

Makes a flows directory of N copies of the shipped team_choice flow (each its own name and
number), starts `ivr serve` on a free port with an embedded Redis in a fresh data directory, and
times it until /readyz answers 200, twice: the first start seeds the store from the files, the
second serves the live version (the draft the same). Usage:

    python bench/startup.py [--flows 200] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_flows(directory: Path, count: int) -> None:
    template = (ROOT / "flows" / "team_choice.yaml").read_text()
    for index in range(count):
        text = template.replace("name: team_choice", f"name: team_choice_{index:04d}")
        text = re.sub(r'numbers: \["\+\d+"\]', f'numbers: ["+1500{index:07d}"]', text)
        (directory / f"team_choice_{index:04d}.yaml").write_text(text)


def time_start(work: Path, workers: int) -> float:
    """Seconds from `ivr serve` starting to /readyz answering 200; the server is stopped."""
    port = free_port()
    env = {**os.environ, "IVR_FLOWS_DIR": str(work / "flows"), "IVR_DATA_DIR": str(work / "var"),
           "IVR_SIP_CONFIG": str(ROOT / "sip_config" / "queues.yaml"),
           "IVR_LOG_LEVEL": "warning"}
    env.pop("IVR_REDIS_URL", None)
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "ivr", "serve", "--port", str(port), "--workers",
         str(workers)], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        while time.monotonic() - started < READY_TIMEOUT:
            if server.poll() is not None:
                raise SystemExit(f"ivr serve exited with status {server.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"not ready after {READY_TIMEOUT} s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ivr-startup-"))
    try:
        (work / "flows").mkdir()
        write_flows(work / "flows", args.flows)
        seeding = time_start(work, args.workers)
        serving = time_start(work, args.workers)
        print(f"{args.flows} flows, {args.workers} worker(s): first start (seeds the store) "
              f"{seeding:.2f} s, second start (serves the live version) {serving:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
