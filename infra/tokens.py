"""API tokens are stored hashed; only the holder knows the token itself."""

import hashlib
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_weak_secret(value: str | None) -> bool:
    """Missing, short or obviously demo secrets are refused outside development."""
    if not value or len(value) < 24:
        return True
    lowered = value.lower()
    return any(word in lowered for word in ("demo", "changeme", "secret", "password", "example"))
