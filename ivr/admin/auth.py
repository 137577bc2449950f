"""Who is an admin: the bearer token (API and page) or a named user with a hashed password
(page), and the sign-in sessions of the page, kept in Redis so every instance shares them.

A session holds a fingerprint of the credential it was opened with (the user's password hash, or
the admin token), so removing the user, changing the password or rotating the token ends it."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import NamedTuple

import redis.asyncio as redis

from ivr.local_tokens import read_or_create_local_token
from ivr.settings import Settings

_SESSION_PREFIX = "{ivr}:admin:session:"
MAX_ACTOR_LENGTH = 64
# Who holds an admin token, as the audit log names them.
ADMIN_TOKEN_NAME = "admin token"
LOCAL_ADMIN_TOKEN_NAME = "local admin token"


class AdminToken(NamedTuple):
    value: str | None  # None: the admin API is disabled
    name: str  # ADMIN_TOKEN_NAME or LOCAL_ADMIN_TOKEN_NAME


def resolve_admin_token(settings: Settings) -> AdminToken:
    """The bearer token the admin API and page accept: IVR_ADMIN_TOKEN; in a local trial (see
    `Settings.is_local_trial`), the local admin token kept in the data dir (made on first use);
    else none."""
    if settings.admin_token is not None:
        return AdminToken(settings.admin_token.get_secret_value(), ADMIN_TOKEN_NAME)
    if settings.is_local_trial:
        token = read_or_create_local_token(
            settings.local_admin_token_path,
            "IVR_ADMIN_TOKEN, IVR_ADMIN_USERS and TWILIO_AUTH_TOKEN are not set")
        return AdminToken(token, LOCAL_ADMIN_TOKEN_NAME)
    return AdminToken(None, ADMIN_TOKEN_NAME)


def tokens_match(presented: object, expected: str | None) -> bool:
    """Constant-time comparison of a secret someone presented (a form field, a header: any type)
    with the one expected; nothing matches a missing or empty secret."""
    if not isinstance(presented, str) or not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def bearer_token_matches(authorization: str | None, token: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header (none matches no token)."""
    if not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    return scheme.lower() == "bearer" and tokens_match(presented.strip(), token)


def actor_label(header: str | None, token_name: str) -> str:
    """Who made an API change with the token called `token_name`: the X-IVR-Actor header if sane
    (the CLI sends $USER), with the token's name, else the token's name alone."""
    if header:
        header = header.strip()
        if header and len(header) <= MAX_ACTOR_LENGTH and header.isprintable():
            return f"{header} ({token_name})"
    return token_name


def credential_fingerprint(session_id: str, credential: str) -> str:
    """HMAC-SHA256 of a credential, keyed by the session id: changes when the credential does,
    and is no help in guessing the credential (nor the same in two sessions)."""
    message = b"ivr admin session credential\0" + credential.encode()
    return hmac.new(session_id.encode(), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AdminSession:
    id: str
    user: str
    csrf_token: str
    via_token: bool = False  # signed in with the admin token, not as a named user
    fingerprint: str = ""

    def credential_matches(self, credential: str | None) -> bool:
        """Whether `credential` (what the configuration now holds for this session's user or
        token, None if nothing) is still the one the session was opened with."""
        if not credential or not self.fingerprint:
            return False
        return hmac.compare_digest(self.fingerprint,
                                   credential_fingerprint(self.id, credential))


class SessionStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds

    async def create(self, user: str, credential: str, via_token: bool = False) -> AdminSession:
        """A new session for `user`, bound to `credential` (its password hash, or the token)."""
        session_id = secrets.token_urlsafe(32)
        session = AdminSession(session_id, user, secrets.token_urlsafe(32), via_token,
                               credential_fingerprint(session_id, credential))
        value = json.dumps({"user": user, "csrf": session.csrf_token, "token": via_token,
                            "fp": session.fingerprint})
        await self.redis.set(_SESSION_PREFIX + session.id, value, ex=self.ttl)
        return session

    async def get(self, session_id: str | None) -> AdminSession | None:
        if not session_id or len(session_id) > 100:
            return None
        raw = await self.redis.get(_SESSION_PREFIX + session_id)
        if raw is None:
            return None
        data = json.loads(raw)
        # A session stored without a fingerprint (older code) matches no credential: it ends.
        return AdminSession(session_id, data["user"], data["csrf"], bool(data.get("token")),
                            str(data.get("fp", "")))

    async def delete(self, session_id: str) -> None:
        await self.redis.delete(_SESSION_PREFIX + session_id)
