"""Each service's Alembic history builds exactly the schema its tables declare."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from crm_service.adapters.tables import metadata as crm_metadata
from ecm_service.adapters.tables import metadata as ecm_metadata


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
