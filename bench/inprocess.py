"""The webhook path in one process, for callgrind: N signed voice webhooks straight into the ASGI
app (no uvicorn, no sockets to the server), against a real Redis (the embedded binary) and the
benchmark's loyalty API (no latency).

Instructions a webhook are the difference of two runs divided by the difference of their
requests, which leaves out the start, the warm-up and the stop:

    valgrind --tool=callgrind --callgrind-out-file=cg.100 python3 bench/inprocess.py -n 100
    valgrind --tool=callgrind --callgrind-out-file=cg.600 python3 bench/inprocess.py -n 600
    # (totals of cg.600 - totals of cg.100) / 500

`--mode distinct` gives each webhook its own caller (a lookup each), `repeated` one caller (cache
hits). `--repo` measures another checkout's code (an older commit in a worktree) with the same
harness. The harness's own work (building and signing each request, as twilio's
RequestValidator does) is in the count: compare runs of the same harness, never across harnesses.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

BENCH = Path(__file__).resolve().parent
TOKEN = "t" * 32
PUBLIC_URL = "http://bench.local"
WARM_UP = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--requests", type=int, default=600)
    parser.add_argument("--mode", choices=("repeated", "distinct"), default="repeated")
    parser.add_argument("--log-level", default="info",
                        help="IVR_LOG_LEVEL (default info, the server's default)")
    parser.add_argument("--log-format", choices=("auto", "json", "text"), default="auto",
                        help="IVR_LOG_FORMAT (default auto: JSON, stderr being no terminal "
                             "under callgrind; send stderr to a file or a pipe)")
    parser.add_argument("--trace-max-entries", type=int, default=None,
                        help="IVR_TRACE_MAX_ENTRIES (0: no call traces; default the server's)")
    parser.add_argument("--repo", type=Path, default=BENCH.parent,
                        help="the checkout whose ivr/ is measured (default this one)")
    opts = parser.parse_args()
    sys.path[:0] = [str(opts.repo.resolve()), str(BENCH)]
    from procs import Processes, free_ports, wait_http

    from ivr.redis.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="ivr-inprocess-") as tmp:
        redis = EmbeddedRedis(Path(tmp))
        try:
            redis_url = redis.start()
            with Processes(Path(tmp)) as procs:
                (port,) = free_ports(1)
                api = procs.start("loyalty-api", [sys.executable, str(BENCH / "loyalty_api.py"),
                                                  "--port", str(port), "--latency-ms", "0"])
                api_url = f"http://127.0.0.1:{port}"
                wait_http(api, api_url + "/stats")
                asyncio.run(serve(opts, Path(tmp), redis_url, api_url))
        finally:
            redis.stop()


async def serve(opts: argparse.Namespace, tmp: Path, redis_url: str, api_url: str) -> None:
    from twilio.request_validator import RequestValidator

    from ivr.app import create_app
    from ivr.settings import Settings

    repo = opts.repo.resolve()
    tuned = ({} if opts.trace_max_entries is None
             else {"trace_max_entries": opts.trace_max_entries})
    app = create_app(Settings(
        _env_file=None, twilio_auth_token=TOKEN, redis_url=redis_url, loyalty_api_url=api_url,
        data_dir=tmp / "ivr-data", flows_dir=repo / "flows",
        sip_config=repo / "sip_config" / "queues.yaml", public_url=PUBLIC_URL,
        log_level=opts.log_level, log_format=opts.log_format, **tuned))
    validator = RequestValidator(TOKEN)
    lifespan = Lifespan(app)
    await lifespan.send("startup")
    for i in range(WARM_UP):  # caches, and the repeated caller's lookup
        await webhook(app, validator, 10**6 + i, opts.mode)
    for i in range(opts.requests):
        twiml = await webhook(app, validator, i, opts.mode)
        assert b"<Sip>" in twiml, twiml
    await lifespan.send("shutdown")


class Lifespan:
    """The ASGI lifespan protocol, as a server drives it."""

    def __init__(self, app: Any) -> None:
        self._events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self._replies: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self._task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"},
                                              "state": {}}, self._events.get,
                                             self._replies.put))

    async def send(self, event: str) -> None:
        await self._events.put({"type": f"lifespan.{event}"})
        reply = await self._replies.get()
        assert reply["type"] == f"lifespan.{event}.complete", reply
        if event == "shutdown":
            await self._task


async def webhook(app: Any, validator: Any, i: int, mode: str) -> bytes:
    """One signed voice webhook into `app`; the TwiML it answered."""
    caller = "+1555000" + (f"{i % 10000:04d}" if mode == "distinct" else "0000")
    params = {"CallSid": f"CA{i:032x}", "AccountSid": "AC" + "0" * 32, "From": caller,
              "To": "+15005550006", "CallStatus": "ringing", "Direction": "inbound"}
    body = urlencode(params).encode()
    signature = validator.compute_signature(PUBLIC_URL + "/twilio/voice", params)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/twilio/voice",
             "raw_path": b"/twilio/voice", "query_string": b"", "root_path": "",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "state": {},
             "headers": [(b"host", b"bench.local"),
                         (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", str(len(body)).encode()),
                         (b"x-twilio-signature", signature.encode()),
                         (b"i-twilio-idempotency-token", f"token-{i}".encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return b"".join(message.get("body", b"") for message in sent)


if __name__ == "__main__":
    main()
