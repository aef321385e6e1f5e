"""A PostgreSQL restart or failover ends every connection in the services' pools. The
next call must get a working connection, not the dead one: before, the first call on
each pooled connection failed (an API call answered 500)."""

import asyncio

import pytest
from sqlalchemy.engine import make_url

from crm_service.service_layer import handlers
from tests.support.databases import _admin


@pytest.fixture
def backend():
    return "postgresql"  # SQLite has no server to restart


async def _terminate_connections(url: str) -> None:
    await _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 f"WHERE datname = '{make_url(url).database}' AND pid <> pg_backend_pid()")


async def test_after_the_database_ended_every_connection_the_next_calls_work(crm, ecm):
    await handlers.create_organization(crm.uow(), user_id="u", name="ООО «Первая»")
    async with ecm.uow() as uow:
        assert await uow.documents.get("none") is None
    assert crm.engine.pool.checkedin() >= 1 and ecm.engine.pool.checkedin() >= 1  # idle in the pools

    for container in (crm, ecm):
        await _terminate_connections(container.settings.database_url)
    await asyncio.sleep(0.2)  # the servers' goodbye reaches the pooled connections

    second = await handlers.create_organization(crm.uow(), user_id="u", name="ООО «Вторая»")
    async with crm.uow() as uow:
        assert (await uow.organizations.get(second.id)).name == "ООО «Вторая»"
    async with ecm.uow() as uow:
        assert await uow.documents.get("none") is None
