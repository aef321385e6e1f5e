"""Fresh databases for tests: a PostgreSQL database per use (the server must be
there: tests fail, never skip, without it) or a SQLite file."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

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


async def end_connections(url: str) -> None:
    """Every connection to the database of `url` ended by the server, as a PostgreSQL
    restart or failover ends them (`pg_terminate_backend`)."""
    name = make_url(url).database
    await _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
                 "AND pid <> pg_backend_pid()")


def create_pg_database(prefix: str, template: str | None = None) -> tuple[str, str]:
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    pg = pg_server()
    credentials = pg["user"] + (f":{pg['password']}" if pg["password"] else "")
    return name, f"postgresql+asyncpg://{credentials}@{pg['host']}:{pg['port']}/{name}"


def drop_pg_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class DatabaseFactory:
    """Creates migrated databases for one service on one backend; cleans up after.

    Each service's migrations run once per backend and session, into a template; every
    migrated database after that is a copy of it (`CREATE DATABASE … TEMPLATE` on
    PostgreSQL, SQLite's backup API for a file): 0.1 s instead of 0.3–0.5 s for running
    the whole Alembic history again, for every one of the suite's few hundred."""

    def __init__(self, tmp_dir: Path):
        self._tmp = tmp_dir
        self._pg: list[str] = []
        self._templates: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix="drop-database")
        self._drops: list = []

    def url(self, service: str, backend: str, *, migrate: bool = True) -> str:
        # Alembic and asyncpg run their own event loops: keep them off the caller's.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self._create, service, backend, migrate).result()

    def _create(self, service: str, backend: str, migrate: bool) -> str:
        if not migrate:
            return self._new(service, backend)
        with self._lock:
            template = self._templates.get((service, backend))
            if template is None:
                template = self._templates[(service, backend)] = self._new(service, backend)
                upgrade_to_head(MIGRATIONS[service], template)
        if backend == "postgresql":
            return self._new(service, backend, template=template)
        url = self._new(service, backend)
        with closing(sqlite3.connect(_sqlite_path(template))) as source, \
                closing(sqlite3.connect(_sqlite_path(url))) as copy:
            source.backup(copy)
        return url

    def _new(self, service: str, backend: str, template: str | None = None) -> str:
        """A new database's URL: on PostgreSQL created (as a copy of `template`'s database
        if given) and remembered for the drop; on SQLite a file name not yet used."""
        if backend == "postgresql":
            name, url = create_pg_database(f"test_{service}", template=template and template.rsplit("/", 1)[1])
            self._pg.append(name)
            return url
        return f"sqlite+aiosqlite:///{self._tmp / f'{service}-{uuid.uuid4().hex[:8]}.db'}"

    def release(self, url: str) -> None:
        """A test is done with this database: a PostgreSQL one is dropped in the background
        while the next tests run (0.1–0.3 s each, the server's file removals and syncs;
        at the session's end they took 10–15 s one after the other)."""
        name = url.rsplit("/", 1)[1]
        if url.startswith("postgresql") and name in self._pg:
            self._pg.remove(name)
            self._drops.append(self._dropper.submit(drop_pg_database, name))

    def cleanup(self) -> None:
        for drop in self._drops:
            drop.result()
        self._dropper.shutdown()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(drop_pg_database, self._pg))


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]
