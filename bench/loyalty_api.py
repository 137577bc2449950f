"""A fake loyalty API for the benchmark: `GET /customers/{number}` after a fixed latency.

A raw asyncio server on uvloop with httptools' parser, so that it is never the bottleneck: it
answers from a table, and its only work per request is a timer. `GET /stats` reports how many
lookups it served and how late its timers fired (`?reset=1` starts a new window), which is how
`run.py` shows that the latency the server saw was the configured one and nothing more.

The tier is a function of the number's last digit (see `TIERS`); `expected_queue` is the queue the
reference flow must route each number to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import cast
from urllib.parse import unquote

import httptools
import uvloop

# Last digit -> (status, loyaltyStatus). Case and surrounding space are part of the test.
TIERS: dict[str, tuple[int, str | None]] = {
    "0": (200, "gold"), "1": (200, "gold"), "9": (200, "Gold"),
    "2": (200, "platinum"), "3": (200, "platinum"), "8": (200, " Platinum "),
    "4": (404, None), "5": (404, None),
    "6": (200, "silver"), "7": (200, None),
}


def expected_queue(number: str) -> str:
    """The queue flows/loyalty_routing.yaml routes `number` to, given this API's answer."""
    status, tier = TIERS[number[-1]]
    if status == 200 and tier is not None and tier.strip().lower() in ("gold", "platinum"):
        return tier.strip().lower()
    return "standard"


def _response(status: int, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 404: "Not Found"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _answer(path: str) -> bytes:
    number = unquote(path.removeprefix("/customers/"))
    if not path.startswith("/customers/") or not number or number[-1] not in TIERS:
        return _response(404, {"error": "not found"})
    status, tier = TIERS[number[-1]]
    return _response(status, {"loyaltyStatus": tier} if status == 200 else {"error": "unknown"})


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.lateness_ms: list[float] = []
        self.window_start = time.perf_counter()

    def report(self) -> dict[str, float]:
        late = sorted(self.lateness_ms) or [0.0]
        return {"requests": self.requests,
                "seconds": time.perf_counter() - self.window_start,
                "late_p50_ms": late[len(late) // 2],
                "late_p99_ms": late[min(len(late) - 1, int(len(late) * 0.99))],
                "late_max_ms": late[-1]}


class LoyaltyProtocol(asyncio.Protocol):
    def __init__(self, delay: float, stats: Stats) -> None:
        self.delay = delay
        self.stats = stats
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self.url)
        self.url = b""
        path = url.path.decode()
        if path == "/stats":
            self._stats(reset=b"reset=1" in (url.query or b""))
            return
        self.stats.requests += 1
        due = time.perf_counter() + self.delay
        asyncio.get_running_loop().call_later(self.delay, self._send, _answer(path), due)

    def _stats(self, reset: bool) -> None:
        assert self.transport is not None
        self.transport.write(_response(200, self.stats.report()))
        if reset:
            self.stats.reset()

    def _send(self, payload: bytes, due: float) -> None:
        self.stats.lateness_ms.append((time.perf_counter() - due) * 1000)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, latency_ms: float) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LoyaltyProtocol(latency_ms / 1000, stats),
                                      "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.latency_ms))


if __name__ == "__main__":
    main()
