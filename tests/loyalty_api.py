"""A real loyalty API for tests: each known caller number answers in its own way."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

GOLD = "+15550000001"
PLATINUM = "+15550000002"
GOLD_SHOUTED = "+15550000003"  # "  GOLD  "
UNKNOWN = "+15550000004"  # 404
BROKEN = "+15550000005"  # 500
HANGS = "+15550000006"  # never answers in time
NOT_JSON = "+15550000007"
NULL_STATUS = "+15550000008"
NO_STATUS = "+15550000009"
SILVER = "+15550000010"
PLATINUM_MIXED = "+15550000011"  # "Platinum"
LIST_BODY = "+15550000012"  # a JSON list, not an object
SLOW = "+15550000013"  # answers gold after 200 ms

TIER_OF = {GOLD: "gold", PLATINUM: "platinum", GOLD_SHOUTED: "  GOLD  ", SILVER: "silver",
           PLATINUM_MIXED: "Platinum"}


@dataclass
class LoyaltyApi:
    # (raw path as sent, Authorization header) of every request, matched or not
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    # Tiers a test gives callers (the loyalty data fixed meanwhile), before the table above.
    tiers: dict[str, str] = field(default_factory=dict)
    # An outage a test makes: every request is answered 503 while it is True.
    down: bool = False

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.customer)])

    async def customer(self, request: Request) -> Response:
        self.requests.append((request.scope["raw_path"].decode(),
                              request.headers.get("authorization")))
        if self.down:
            return PlainTextResponse("down for maintenance", status_code=503)
        prefix, _, number = request.url.path.partition("/customers/")
        if prefix or "/" in number:
            return JSONResponse({"error": "no such resource"}, status_code=404)
        if number in self.tiers or number in TIER_OF:
            tier = self.tiers.get(number) or TIER_OF[number]
            return JSONResponse({"loyaltyStatus": tier, "name": "Test Caller"})
        if number == BROKEN:
            return PlainTextResponse("upstream exploded", status_code=500)
        if number == HANGS:
            await asyncio.sleep(60)
        if number == NOT_JSON:
            return Response("<html>maintenance</html>", media_type="text/html")
        if number == NULL_STATUS:
            return JSONResponse({"loyaltyStatus": None})
        if number == NO_STATUS:
            return JSONResponse({"name": "No Status"})
        if number == LIST_BODY:
            return JSONResponse(["gold"])
        if number == SLOW:
            await asyncio.sleep(0.2)
            return JSONResponse({"loyaltyStatus": "gold"})
        return JSONResponse({"error": "not found"}, status_code=404)
