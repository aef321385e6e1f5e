"""People and service accounts that may call a service's API, with hashed tokens."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Column, MetaData, String, Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from infra.tokens import hash_token
from infra.utc_datetime import UtcDateTime


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str


def users_table(metadata: MetaData) -> Table:
    return Table(
        "users",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("name", String(200), nullable=False, unique=True),
        Column("role", String(32), nullable=False),
        Column("token_hash", String(64), nullable=False, unique=True),
        Column("created_at", UtcDateTime(), nullable=False),
    )


async def _user_by_hash(session_factory: async_sessionmaker, users: Table, digest: str) -> User | None:
    async with session_factory() as session:
        row = (await session.execute(select(users).where(users.c.token_hash == digest))).mappings().first()
    return User(id=row["id"], name=row["name"], role=row["role"]) if row else None


class UserDirectory:
    """Who a bearer token belongs to, for every API call and page. A found user is
    remembered in this process for `cache_seconds` (0: looked up every time): each
    lookup is a transaction of its own, and an approval request costs the CRM two of
    them (the rep's call, the bridge fetching the document). The price: a token deleted
    or changed in the database keeps working here for up to `cache_seconds`. Unknown
    tokens are never remembered (a new token works at once)."""

    MAX_ENTRIES = 10_000

    def __init__(self, session_factory: async_sessionmaker, users: Table, cache_seconds: float):
        self._session_factory, self._users, self._seconds = session_factory, users, cache_seconds
        self._known: dict[str, tuple[float, User]] = {}  # token hash -> (valid until, user)

    async def by_token(self, token: str) -> User | None:
        digest = hash_token(token)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[0] > now:
            return known[1]
        user = await _user_by_hash(self._session_factory, self._users, digest)
        if user is not None and self._seconds > 0:
            if len(self._known) >= self.MAX_ENTRIES:
                self._known.clear()
            self._known[digest] = (now + self._seconds, user)
        else:
            self._known.pop(digest, None)
        return user


async def upsert_user(session_factory: async_sessionmaker, users: Table, *, name: str, role: str, token: str) -> str:
    """Idempotent by name: re-running a seed refreshes the role and token. Replicas that
    start together upsert the same integration user at once: the one whose insert loses
    the race updates the row the other inserted."""
    try:
        return await _upsert_user(session_factory, users, name=name, role=role, token=token)
    except IntegrityError:
        return await _upsert_user(session_factory, users, name=name, role=role, token=token)


async def _upsert_user(session_factory: async_sessionmaker, users: Table, *, name: str, role: str, token: str) -> str:
    async with session_factory() as session, session.begin():
        existing = (await session.execute(select(users.c.id).where(users.c.name == name))).scalar()
        if existing:
            await session.execute(
                update(users).where(users.c.id == existing).values(role=role, token_hash=hash_token(token))
            )
            return existing
        user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{name}"))
        await session.execute(
            users.insert().values(
                id=user_id, name=name, role=role, token_hash=hash_token(token), created_at=datetime.now(timezone.utc)
            )
        )
        return user_id
