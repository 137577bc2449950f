"""The stack's ceiling: a bare Starlette app that parses the webhook's form and answers constant
TwiML (the size of the real answer). Served by uvicorn with the same settings as `ivr serve`."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Dial action="/twilio/voice/dial?'
         'queue=standard&amp;try=0"><Sip>sip:standard@queues.example.com</Sip></Dial></Response>')


async def voice(request: Request) -> Response:
    form = await request.form()
    if "From" not in form:
        return PlainTextResponse("Bad Request: missing From", status_code=400)
    return Response(TWIML, media_type="text/xml")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/twilio/voice", voice, methods=["POST"]),
                        Route("/healthz", healthz, methods=["GET"])])
