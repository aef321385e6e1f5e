"""Each service's Alembic history builds exactly the schema its tables declare."""

import asyncio
import json
import logging
import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from crm_service.adapters.tables import metadata as crm_metadata
from ecm_service.adapters.tables import metadata as ecm_metadata
from infra.db import migrations_at_head
from infra.search_index import include_object
from tests.support.databases import MIGRATIONS, ROOT


@pytest.mark.parametrize("service, metadata", [("crm", crm_metadata), ("ecm", ecm_metadata)])
async def test_migrations_match_the_declared_tables(databases, backend, service, metadata):
    engine = create_async_engine(databases.url(service, backend))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(
                    sync, opts={"include_object": include_object(sync.dialect.name)}), metadata))
    finally:
        await engine.dispose()
    assert diff == []


@pytest.mark.parametrize("service", ["crm", "ecm"])
def test_indexes_on_live_tables_are_built_concurrently_and_undone(databases, service, caplog):
    """Migrations 0010 (foreign keys) and 0011 (inbox.applied_at) add indexes to tables a
    running system writes to: on PostgreSQL they are built CONCURRENTLY (writes go on
    meanwhile), outside a transaction; down and up again works."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS[service]))
    cfg.set_main_option("sqlalchemy.url", databases.url(service, "postgresql", migrate=False).replace("%", "%%"))
    command.upgrade(cfg, "0009")
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
        command.upgrade(cfg, "head")
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CREATE INDEX")]
    assert built and all(m.startswith("CREATE INDEX CONCURRENTLY") for m in built), built
    assert any("ix_inbox_applied_at" in m for m in built), built
    command.downgrade(cfg, "0009")
    command.upgrade(cfg, "head")


@pytest.mark.parametrize("service", ["crm", "ecm"])
def test_replicas_migrating_a_fresh_database_at_once_all_succeed(databases, service):
    """Kubernetes starts a service's replicas together, each migrating in its init
    container: three real `migrate` processes at once on a fresh PostgreSQL database.
    Without the migration lock two of three failed on tables and indexes the other had
    just created; a waiter blocked inside a transaction deadlocked with the CONCURRENTLY
    index builds."""
    url = databases.url(service, "postgresql", migrate=False)
    env = {**os.environ, f"{service.upper()}_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    replicas = [subprocess.Popen([sys.executable, "-m", f"{service}_service", "migrate"], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [replica.communicate(timeout=120)[0] for replica in replicas]
    failed = [out[-1500:] for replica, out in zip(replicas, outputs, strict=True) if replica.returncode != 0]
    assert failed == []

    async def at_head() -> bool:
        engine = create_async_engine(url)
        try:
            return await migrations_at_head(engine, MIGRATIONS[service])
        finally:
            await engine.dispose()
    assert asyncio.run(at_head())


@pytest.mark.parametrize("service", ["crm", "ecm"])
def test_seed_demo_with_migrate_builds_and_seeds_a_fresh_database_in_one_process(databases, backend, service, tmp_path):
    """What `make run` runs for each service: `seed-demo --migrate` on an empty database
    leaves it at the newest revision with the demo users in it; without `--migrate` an
    empty database like it is refused (no tables), so the flag is what migrated it."""
    users_file = tmp_path / "demo-users.json"
    users_file.write_text(json.dumps([{"service": service, "name": f"{service}-demo", "role": "admin",
                                       "token": "t" * 40}]))

    def seed(url: str, *flags: str) -> subprocess.CompletedProcess:
        env = {**os.environ, f"{service.upper()}_DATABASE_URL": url, "APP_ENV": "development", "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", f"{service}_service", "seed-demo", *flags,
                               "--users-file", str(users_file)], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    assert seed(databases.url(service, backend, migrate=False)).returncode != 0
    url = databases.url(service, backend, migrate=False)
    done = seed(url, "--migrate")
    assert done.returncode == 0, done.stderr[-1500:]

    async def state() -> tuple[bool, list]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                users = (await conn.execute(text("SELECT name FROM users"))).scalars().all()
            return await migrations_at_head(engine, MIGRATIONS[service]), users
        finally:
            await engine.dispose()
    assert asyncio.run(state()) == (True, [f"{service}-demo"])


def test_the_organizations_existing_before_0015_get_their_normalised_name(databases, backend):
    """Migration 0015 fills `name_norm`, which the search by name reads, for the rows a
    running CRM holds already, a thousand at a time: 2,345 rows, three batches and a part."""
    url = databases.url("crm", backend, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS["crm"]))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "0014")
    names = {f"{i:05d}": f"ООО «Рога и Копыта» {i}" for i in range(2345)}
    names["zz-empty"] = "ООО"  # a legal form only: nothing left to search by

    async def run(*statements) -> list:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                return [await conn.execute(text(sql), params) for sql, params in statements]
        finally:
            await engine.dispose()

    asyncio.run(run(("INSERT INTO organizations (id, name, created_by, created_at, addresses, phones, emails, "
                     "registry_ids) VALUES (:id, :name, 'u', '2026-12-07 10:00:00+00', '[]', '[]', '[]', '{}')",
                     [{"id": k, "name": v} for k, v in names.items()])))
    command.upgrade(cfg, "head")

    async def read() -> dict:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return dict((await conn.execute(text("SELECT id, name_norm FROM organizations"))).all())
        finally:
            await engine.dispose()
    filled = asyncio.run(read())
    assert filled == {**{f"{i:05d}": f"рога и копыта {i}" for i in range(2345)}, "zz-empty": ""}
    command.downgrade(cfg, "0014")
    command.upgrade(cfg, "head")
