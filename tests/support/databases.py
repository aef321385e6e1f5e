"""Fresh databases for tests: a PostgreSQL database per use (the server must be
there: tests fail, never skip, without it) or a SQLite file."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from infra.db import upgrade_to_head


def pg_server() -> dict:
    """Read at use time: the opt-in testcontainers start may set these first."""
    return {
        "host": os.environ.get("TEST_PG_HOST", "127.0.0.1"),
        "port": int(os.environ.get("TEST_PG_PORT", "5432")),
        "user": os.environ.get("TEST_PG_USER", "postgres"),
        "password": os.environ.get("TEST_PG_PASSWORD") or None,
    }

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = {"crm": ROOT / "crm_service" / "migrations", "ecm": ROOT / "ecm_service" / "migrations"}


def require_postgres() -> None:
    pg = pg_server()
    try:
        socket.create_connection((pg["host"], pg["port"]), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"PostgreSQL is required at {pg['host']}:{pg['port']} and is not reachable: {exc}",
                    pytrace=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(database="postgres", **pg_server())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_pg_database(prefix: str) -> tuple[str, str]:
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    pg = pg_server()
    credentials = pg["user"] + (f":{pg['password']}" if pg["password"] else "")
    return name, f"postgresql+asyncpg://{credentials}@{pg['host']}:{pg['port']}/{name}"


def drop_pg_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class DatabaseFactory:
    """Creates migrated databases for one service on one backend; cleans up after."""

    def __init__(self, tmp_dir: Path):
        self._tmp = tmp_dir
        self._pg: list[str] = []

    def url(self, service: str, backend: str, *, migrate: bool = True) -> str:
        # Alembic and asyncpg run their own event loops: keep them off the caller's.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self._create, service, backend, migrate).result()

    def _create(self, service: str, backend: str, migrate: bool) -> str:
        if backend == "postgresql":
            name, url = create_pg_database(f"test_{service}")
            self._pg.append(name)
        else:
            url = f"sqlite+aiosqlite:///{self._tmp / f'{service}-{uuid.uuid4().hex[:8]}.db'}"
        if migrate:
            upgrade_to_head(MIGRATIONS[service], url)
        return url

    def cleanup(self) -> None:
        for name in self._pg:
            drop_pg_database(name)
