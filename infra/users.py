"""People and service accounts that may call a service's API, with hashed tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Column, MetaData, String, Table, select, update
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


async def find_user_by_token(session_factory: async_sessionmaker, users: Table, token: str) -> User | None:
    async with session_factory() as session:
        row = (
            await session.execute(select(users).where(users.c.token_hash == hash_token(token)))
        ).mappings().first()
    return User(id=row["id"], name=row["name"], role=row["role"]) if row else None


async def upsert_user(session_factory: async_sessionmaker, users: Table, *, name: str, role: str, token: str) -> str:
    """Idempotent by name: re-running a seed refreshes the role and token."""
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
