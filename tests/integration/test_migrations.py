"""Each service's Alembic history builds exactly the schema its tables declare."""

import logging

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from crm_service.adapters.tables import metadata as crm_metadata
from ecm_service.adapters.tables import metadata as ecm_metadata
from tests.support.databases import MIGRATIONS


@pytest.mark.parametrize("service, metadata", [("crm", crm_metadata), ("ecm", ecm_metadata)])
async def test_migrations_match_the_declared_tables(databases, backend, service, metadata):
    engine = create_async_engine(databases.url(service, backend))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
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
