"""X-Twilio-Signature: which token signs webhooks, and whether a request carries its signature."""

from __future__ import annotations

import base64
import functools
import hmac
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from urllib.parse import urlparse

from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    add_port,
    get_signature_algorithm,
    remove_port,
)

from ivr.local_tokens import read_or_create_local_token
from ivr.settings import Settings

_DIGESTS = {HMAC_SHA1: "sha1", HMAC_SHA256: "sha256"}
# As ASGI servers give header names: lower-cased.
_SIGNATURE_HEADER = SIGNATURE_HEADER.lower()
_SETTINGS_HEADER = SIGNATURE_SETTINGS_HEADER.lower()


def resolve_auth_token(settings: Settings) -> str:
    """TWILIO_AUTH_TOKEN, or else the local token kept in the data dir (made on first use).

    Webhooks are never accepted unsigned: without a Twilio account, `ivr call` signs its test
    calls with the local token, and Twilio's real webhooks are rejected until the token is set.
    """
    if settings.twilio_auth_token is not None:
        return settings.twilio_auth_token.get_secret_value()
    return read_or_create_local_token(settings.local_token_path, "TWILIO_AUTH_TOKEN is not set")


class WebhookVerifier:
    """Checks X-Twilio-Signature against the URL Twilio requested, as rebuilt from
    IVR_PUBLIC_URL (the request's own URL when unset).

    The verdict is twilio's `RequestValidator.validate`'s: the same URL variants (twilio's own
    `add_port`/`remove_port`), the same string signed, a constant-time comparison. The tests
    hold the two side by side on random requests. It is built here rather than wrapped
    because `validate` is a large share of a cache-hit call's CPU (bench/README.md, *Why the
    code is written as it is*): it parses the URL twice, signs again when the first signature
    already matched, and builds the string to sign with a method call and two sorts per
    parameter where one sort of the pairs gives the same."""

    def __init__(self, auth_token: str, public_url: str | None) -> None:
        # Keyed once: copying a keyed HMAC is cheaper than keying one for each call (bench/README).
        self._macs = {digest: hmac.new(auth_token.encode("utf-8"), digestmod=digest)
                      for digest in _DIGESTS.values()}
        self._public_url = public_url

    def signed_url(self, request_url: Callable[[], str], path: str, query: str) -> str:
        """The URL Twilio signed: IVR_PUBLIC_URL with the request's path and query, or else
        the request's own URL (`request_url`, built only then)."""
        if self._public_url is None:
            return request_url()
        return self._public_url + path + (f"?{query}" if query else "")

    def rejection(self, url: str, pairs: Sequence[tuple[str, str]],
                  headers: Mapping[str, str], repeats: bool = True) -> str | None:
        """None when the request is genuine; otherwise why it is not (safe to log). `pairs` are
        the form's (name, value) pairs, repeats included (`repeats` False: no name is
        repeated, and they need not be looked for); `headers` must find lower-cased names, as
        a dict of an ASGI request's headers or Starlette's `Headers` do."""
        signature = headers.get(_SIGNATURE_HEADER)
        if not signature:
            return f"no {SIGNATURE_HEADER} header"
        algorithm = get_signature_algorithm(headers.get(_SETTINGS_HEADER))
        digest = _DIGESTS.get(algorithm.upper())
        if digest is None:
            return f"unsupported signature algorithm {algorithm!r}"
        # Twilio signs the URL, then each name followed by each of its distinct values, names
        # and values in sorted order: the distinct pairs, sorted.
        signed_params = "".join(chain.from_iterable(sorted(set(pairs) if repeats else pairs)))
        expected = signature.encode("utf-8", "replace")
        for candidate in url_variants(url):
            mac = self._macs[digest].copy()
            mac.update((candidate + signed_params).encode("utf-8"))
            if hmac.compare_digest(base64.b64encode(mac.digest()), expected):
                return None
        return (
            f"signature does not match {url} (check TWILIO_AUTH_TOKEN and that IVR_PUBLIC_URL "
            "is the URL configured in Twilio)"
        )


@functools.lru_cache(maxsize=1024)
def url_variants(url: str) -> tuple[str, str]:
    """The URL without and with its default port, as twilio's `validate` tries them, the form
    requested first: Twilio signs one or the other. A webhook's URLs are few (a path and a
    handful of query strings), hence the cache."""
    parsed = urlparse(url)
    without, with_port = remove_port(parsed), add_port(parsed)
    return (with_port, without) if with_port == url else (without, with_port)
