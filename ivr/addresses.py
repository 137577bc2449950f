"""Addresses as Twilio writes them in a webhook's `From` and `To`, for the commands that make
webhooks up (`ivr call`, `ivr simulate`): anything else is refused in one line saying how to
write it, rather than posted as no real webhook would be."""

from __future__ import annotations

import re

from ivr.validation import E164_PATTERN

E164 = re.compile(E164_PATTERN)
# A call may also come from, or go to, a Voice SDK client or a SIP endpoint.
VOICE_ADDRESS = re.compile(r"client:[^\s:]+|sips?:[^\s@]+@\S+")


def twilio_address(value: str, role: str, channel: str) -> str:
    """`value` as Twilio would send it as the caller or the number called (`role`), or
    SystemExit saying how to write it."""
    if E164.fullmatch(value) or (channel == "voice" and VOICE_ADDRESS.fullmatch(value)):
        return value
    if value.lower().startswith("whatsapp:"):
        raise SystemExit(f"ivr: the {role} {value!r}: give the number alone, with --channel "
                         "messaging --whatsapp")
    compact = re.sub(r"[\s().\-]", "", value)
    if E164.fullmatch(compact):
        how = f"without spaces or punctuation: {compact}"
    elif re.fullmatch(r"1?[2-9][0-9]{9}", compact):
        how = f"in E.164, + and the country code: +1{compact[-10:]} for a US or Canadian number"
    else:
        how = "in E.164, + and the country code, e.g. +15551234567"
    raise SystemExit(f"ivr: the {role} {value!r} is not a number as Twilio sends it: write it "
                     f"{how}")
