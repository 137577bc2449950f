"""Local tokens: what a trial on one machine runs on, with nothing set up.

Without TWILIO_AUTH_TOKEN, webhooks are checked against a local Twilio token; in a local trial
(no TWILIO_AUTH_TOKEN, no IVR_ADMIN_TOKEN, no IVR_ADMIN_USERS) the admin API and page accept a
local admin token. The server makes each once in IVR_DATA_DIR (`ivr serve` before its workers
start), and the `ivr` commands run from the same directory read them. Only the server makes one:
a token made by a command would be one that no server knows.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("ivr.security")


def read_or_create_local_token(path: Path, why: str) -> str:
    """The token kept in `path`, made there first if there is none: readable by its owner only,
    and of processes racing to make it, exactly one token wins. `why` says, in the log line,
    which settings are missing."""
    token = read_local_token(path)
    if token is not None:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secrets.token_hex(32))
    try:
        os.link(staging, path)  # atomic: fails if another process made it meanwhile
        log.info("generated a local token in %s (%s)", path, why)
    except FileExistsError:
        pass
    finally:
        staging.unlink()
    return path.read_text(encoding="ascii").strip()


def read_local_token(path: Path) -> str | None:
    """The token kept in `path`, or None when there is none (none is made)."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
