"""Publishes and a rollback under load: signed calls sent without pause to a real `ivr serve`
with two workers while the flows change four times. None is refused or fails, each routes by a
version live while it was answered, and a second after a publish every call routes by it."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests import loyalty_api as L
from tests.conftest import Served
from tests.test_flow_versions_api import LOYALTY, gold_to
from tests.twilio_client import FakeTwilio, call_params

CLIENTS = 4
# How long each version is live under load: past the second within which every worker serves
# it, so calls sent after that second are there to check.
PHASE = 1.5
# The bound: every instance and worker serves a publish within a second.
SWITCH_BOUND = 1.0
SIP = re.compile(rb"<Dial[^>]*><Sip>sip:([a-z_]+)@queues\.example\.com</Sip></Dial>")


@dataclass
class Answered:
    sent: float
    answered: float
    route: str | None  # the queue dialled; None: a connection error or no route
    problem: str = ""


@dataclass
class Change:
    """A publish or rollback: when it was sent and answered, the version it made, where that
    version routes gold callers."""

    sent: float
    answered: float
    version: int
    route: str


async def call_continuously(twilio: FakeTwilio, stop: asyncio.Event,
                            answers: list[Answered]) -> None:
    # A connection per call, as Twilio's: the kernel spreads them over both workers.
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(
            max_keepalive_connections=0)) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await twilio.apost(client, "/twilio/voice", call_params(L.GOLD))
            except httpx.HTTPError as exc:
                answers.append(Answered(sent, time.monotonic(), None, repr(exc)))
                continue
            found = SIP.search(response.content)
            answers.append(Answered(sent, time.monotonic(), found and found[1].decode(),
                                    "" if response.status_code == 200 and found
                                    else f"{response.status_code}: {response.text}"))


async def change(admin: httpx.AsyncClient, path: str, body: dict[str, object],
                 route: str) -> Change:
    sent = time.monotonic()
    response = await admin.post(path, json=body)
    assert response.status_code == 201, response.text
    return Change(sent, time.monotonic(), response.json()["version"], route)


async def load_through_changes(server: Served, twilio: FakeTwilio, token: str,
                               files: dict[str, str]) -> tuple[list[Answered], list[Change]]:
    answers: list[Answered] = []
    stop = asyncio.Event()
    callers = [asyncio.create_task(call_continuously(twilio, stop, answers))
               for _ in range(CLIENTS)]
    changes = [Change(0.0, 0.0, 1, "gold")]
    async with httpx.AsyncClient(base_url=server.url + "/admin/api", timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as admin:
        await asyncio.sleep(PHASE)  # load on version 1 first
        for route in ("platinum", "standard", "platinum"):
            changes.append(await change(admin, "/flows/versions",
                                        {"files": gold_to(files, route), "message": route},
                                        route))
            await asyncio.sleep(PHASE)
        changes.append(await change(admin, "/flows/rollback", {"version": 1}, "gold"))
        await asyncio.sleep(PHASE)
    stop.set()
    await asyncio.gather(*callers)
    return answers, changes


def test_calls_under_load_through_three_publishes_and_a_rollback_all_route_by_a_live_version(
    newcomer_serve: Callable[..., Served]
) -> None:
    server = newcomer_serve("--workers", "2")
    var = server.cwd / "var"
    twilio = FakeTwilio(server.url, token=(var / "local_twilio_auth_token").read_text())
    files = {path.name: path.read_text() for path in sorted(Path(server.cwd, "flows").glob(
        "*.yaml"))}
    assert LOYALTY in files
    answers, changes = asyncio.run(load_through_changes(
        server, twilio, (var / "local_admin_token").read_text(), files))

    assert [c.version for c in changes] == [1, 2, 3, 4, 5]
    assert len(answers) > 100, len(answers)  # a load, not a trickle
    failed = [a for a in answers if a.problem]
    assert not failed, f"{len(failed)} of {len(answers)} failed: {failed[:3]}"
    for answer in answers:
        # The versions that may have answered: made before the answer came, and not yet
        # replaced (within the switch's bound) when the call was sent.
        possible = {c.route for c, after in zip(changes, [*changes[1:], None], strict=True)
                    if c.sent <= answer.answered
                    and (after is None or answer.sent < after.answered + SWITCH_BOUND)}
        assert answer.route in possible, (answer, possible)
    for made, after in zip(changes[1:], [*changes[2:], None], strict=True):
        settled = [a for a in answers if a.sent >= made.answered + SWITCH_BOUND
                   and (after is None or a.answered < after.sent)]
        assert settled, f"no call a second after version {made.version} was published"
        assert {a.route for a in settled} == {made.route}, made
    log = server.log.read_text()
    assert "Traceback" not in log, log
    # `ivr serve` logs JSON lines (its own and uvicorn's): none at error level or above.
    levels = [json.loads(line).get("level") for line in log.splitlines()
              if line.startswith("{")]
    assert levels and not {"error", "critical"} & set(levels), log
