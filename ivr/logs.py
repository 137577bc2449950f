"""Logging set-up, and masking: phone numbers never reach a log whole."""

from __future__ import annotations

import logging
import re

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DIGITS = re.compile(r"\d")


def mask_number(address: str) -> str:
    """`whatsapp:+15551234567` -> `whatsapp:+1*******567`: enough to tell callers apart in a log."""
    prefix, _, number = address.rpartition(":")
    digits = len(_DIGITS.findall(number))
    if digits <= 4:
        return address if not digits else prefix + (":" if prefix else "") + "*" * len(number)
    seen = 0
    masked = []
    for char in number:
        if char.isdigit():
            seen += 1
            masked.append(char if seen <= 1 or seen > digits - 3 else "*")
        else:
            masked.append(char)
    return prefix + (":" if prefix else "") + "".join(masked)


def configure_logging(level: str) -> None:
    """Send `ivr.*` logs to stderr at `level`, once per process (workers call it too), unless
    the host program has configured logging itself."""
    logger = logging.getLogger("ivr")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
