"""Webhooks as Twilio sends them: form-encoded, signed with twilio's own RequestValidator."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit
from dataclasses import dataclass

import httpx
from twilio.request_validator import RequestValidator

TOKEN = "test-auth-token-0123456789abcdef"
OUR_NUMBER = "+15005550006"
_sids = itertools.count(1)


def call_params(caller: str, **extra: str) -> dict[str, str]:
    sid = f"CA{next(_sids):032x}"
    return {"CallSid": sid, "AccountSid": "AC" + "1" * 32, "From": caller, "To": OUR_NUMBER,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", **extra}


def message_params(sender: str, body: str = "Where is my order?", **extra: str) -> dict[str, str]:
    sid = f"SM{next(_sids):032x}"
    to = f"whatsapp:{OUR_NUMBER}" if sender.startswith("whatsapp:") else OUR_NUMBER
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "1" * 32, "From": sender,
            "To": to, "Body": body, "NumMedia": "0", **extra}


def redirect_path(response: httpx.Response) -> str | None:
    """The path of a TwiML <Redirect> (relative, as the server writes it), if there is one."""
    if response.status_code != 200 or b"<Redirect" not in response.content:
        return None
    element = ET.fromstring(response.content).find("Redirect")
    return None if element is None else urlsplit(element.text or "")._replace(
        scheme="", netloc="").geturl()


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


@dataclass
class FakeTwilio:
    """Posts signed webhooks to `server` as if Twilio requested `public_url` (default: server)."""

    server: str
    public_url: str | None = None
    token: str = TOKEN

    def url(self, path: str) -> str:
        return (self.public_url or self.server) + path

    def post(self, path: str, params: dict[str, str], follow: bool = True,
             **kwargs: object) -> httpx.Response:
        """Post a signed webhook; like Twilio, follow a <Redirect> (a hold) unless told not to."""
        headers = {"X-Twilio-Signature": sign(self.url(path), params, self.token)}
        response = httpx.post(self.server + path, data=params, headers=headers, timeout=30,
                              **kwargs)
        redirect = redirect_path(response)
        if follow and redirect is not None:
            return self.post(redirect, params, follow=False, **kwargs)
        return response

    async def apost(self, client: httpx.AsyncClient, path: str, params: dict[str, str],
                    follow: bool = True) -> httpx.Response:
        """`post` on an async client (its connections kept alive)."""
        response = await client.post(self.server + path, data=params, headers={
            "X-Twilio-Signature": sign(self.url(path), params, self.token)})
        redirect = redirect_path(response)
        if follow and redirect is not None:
            return await self.apost(client, redirect, params, follow=False)
        return response

    def call(self, caller: str, **extra: str) -> httpx.Response:
        return self.post("/twilio/voice", call_params(caller, **extra))

    def message(self, sender: str, body: str = "Where is my order?", **extra: str) -> httpx.Response:
        return self.post("/twilio/messaging", message_params(sender, body, **extra))
