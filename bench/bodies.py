"""Signed webhook bodies for wrk, precomputed here because wrk's Lua has no HMAC.

Voice webhooks as Twilio sends them (form-encoded, signed with twilio's own RequestValidator for
the server's URL), written as one Lua slice per wrk thread. All the callers of a slice are routed
to the same queue: wrk's Lua cannot tell which of a thread's connections an answer came on, but
when every request of a thread expects one `<Sip>` element, every answer can be checked exactly.
Threads are shared out between the queues in proportion to the callers each queue gets.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import yaml
from twilio.request_validator import RequestValidator

from loyalty_api import expected_queue

ACCOUNT_SID = "AC" + "1" * 32
OUR_NUMBER = "+15005550006"
# The rest of what a real inbound-call webhook carries, so that parsing and signing cost the same.
GEO = {"City": "SAN FRANCISCO", "State": "CA", "Zip": "94105", "Country": "US"}

Callers = Callable[[int], str]  # index -> caller number


def hot_callers(index: int) -> str:
    """8 numbers over and over: last digits 0-7 take every tier and the 404."""
    return f"+155501000{index % 8:02d}"


def distinct_callers(prefix: str) -> Callers:
    return lambda index: f"{prefix}{index:07d}"


@dataclass(frozen=True)
class Slice:
    expect: str  # the <Sip>...</Sip> element every answer on this thread must carry
    hooks: list[tuple[str, str, str]]  # (form body, X-Twilio-Signature, idempotency token)


def thread_queues(callers: Callers, threads: int) -> list[str]:
    """The queue each thread's callers go to: threads in proportion to each queue's share of
    callers (largest remainder), at least one per queue."""
    shares = Counter(expected_queue(callers(i)) for i in range(1000))
    if threads < len(shares):
        raise ValueError(f"need at least {len(shares)} wrk threads, one per queue")
    exact = {q: threads * n / 1000 for q, n in shares.items()}
    counts = {q: max(1, int(x)) for q, x in exact.items()}
    for q in sorted(exact, key=lambda q: exact[q] - int(exact[q]), reverse=True):
        if sum(counts.values()) >= threads:
            break
        counts[q] += 1
    while sum(counts.values()) > threads:  # the at-least-one rule overshot
        counts[max(counts, key=lambda q: counts[q] - exact[q])] -= 1
    return [q for q in sorted(counts) for _ in range(counts[q])]


def _routed_to(callers: Callers, queue: str) -> Iterator[str]:
    return (n for n in map(callers, itertools.count()) if expected_queue(n) == queue)


def caller_slices(callers: Callers, threads: int, per_thread: int) -> list[tuple[str, list[str]]]:
    """(queue, callers) for each thread; consecutive threads of a queue take consecutive runs of
    its callers, so with distinct numbers no caller appears twice."""
    queues = thread_queues(callers, threads)
    streams = {q: _routed_to(callers, q) for q in set(queues)}
    return [(q, list(itertools.islice(streams[q], per_thread))) for q in queues]


def call_params(caller: str, call_sid: str) -> dict[str, str]:
    params = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": caller, "To": OUR_NUMBER,
              "Caller": caller, "Called": OUR_NUMBER, "CallStatus": "ringing",
              "Direction": "inbound", "ApiVersion": "2010-04-01"}
    for who in ("From", "To", "Caller", "Called"):
        params.update({f"{who}{key}": value for key, value in GEO.items()})
    return params


def sip_elements(queues_file: Path) -> dict[str, str]:
    """Queue name -> the exact `<Sip>` element the server answers for it (a fresh store is
    seeded from this file)."""
    queues = yaml.safe_load(queues_file.read_text(encoding="utf-8"))["queues"]
    return {name: f"<Sip>{queue['sip_uri']}</Sip>" for name, queue in queues.items()}


def signed_slices(url: str, token: str, callers: Callers, threads: int, per_thread: int,
                  tag: int, sips: dict[str, str]) -> list[Slice]:
    """`tag` keeps CallSids apart between scenarios."""
    validator = RequestValidator(token)
    slices = []
    for thread, (queue, numbers) in enumerate(caller_slices(callers, threads, per_thread)):
        hooks = []
        for index, caller in enumerate(numbers):
            sid = f"CA{tag:02x}{thread:06x}{index:024x}"
            params = call_params(caller, sid)
            # Twilio sends an I-Twilio-Idempotency-Token with every webhook: the server looks
            # each one up, in case the webhook is a retry.
            hooks.append((urlencode(params), validator.compute_signature(url, params),
                          f"{sid}-{secrets.token_hex(8)}"))
        slices.append(Slice(sips[queue], hooks))
    return slices


def http_request(host: str, body: str, signature: str, token: str) -> bytes:
    """The whole POST as wrk sends it (wrk.format's layout), so that wrk's Lua only reads it."""
    return (f"POST /twilio/voice HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\nI-Twilio-Idempotency-Token: {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode("ascii")


def write_slices(directory: Path, slices: list[Slice], host: str) -> Path:
    """slice_<n>.txt for wrk thread n: the expected `<Sip>` element on the first line, then each
    request as its length in bytes, a newline and the request. A plain file, not Lua source: wrk
    loads each thread's slice before starting the next thread, and parsing megabytes of Lua on
    the load generator's core delayed the threads already running (seen as a start-up tail in
    p99)."""
    directory.mkdir(parents=True, exist_ok=True)
    for n, piece in enumerate(slices):
        with (directory / f"slice_{n}.txt").open("wb") as out:
            out.write(piece.expect.encode("ascii") + b"\n")
            for body, signature, token in piece.hooks:
                request = http_request(host, body, signature, token)
                out.write(b"%d\n%s" % (len(request), request))
    return directory
