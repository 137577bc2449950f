"""Admin users' passwords as settings hold them: salted PBKDF2-HMAC-SHA256 hashes, made by
`ivr admin hash-password`, checked by the admin page at sign-in and by the settings at load."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PBKDF2_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
_SCHEME = "pbkdf2_sha256"


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hash>`, salt and hash base64."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join([_SCHEME, str(iterations), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, expected = encoded.split("$")
        if scheme != _SCHEME:
            return False
        digest = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(digest, base64.b64decode(expected))
    except (ValueError, TypeError):
        return False


def check_password_hash_format(encoded: str) -> None:
    """Raise ValueError unless `encoded` is a hash this module made (not a plain password)."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != _SCHEME or not parts[1].isdigit():
        raise ValueError("is not a password hash: make one with `ivr admin hash-password`")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
