"""A PostgreSQL restart or failover ends every connection in the services' pools. The
next call must get a working connection, not the dead one: before, the first call on
each pooled connection failed (an API call answered 500)."""

import asyncio

import pytest

from crm_service.service_layer import handlers
from tests.support.databases import end_connections


@pytest.fixture
def backend():
    return "postgresql"  # SQLite has no server to restart


async def test_after_the_database_ended_every_connection_the_next_calls_work(crm, ecm):
    await handlers.create_organization(crm.uow(), user_id="u", name="ООО «Первая»")
    async with ecm.uow() as uow:
        assert await uow.documents.get("none") is None
    assert crm.engine.pool.checkedin() >= 1 and ecm.engine.pool.checkedin() >= 1  # idle in the pools

    for container in (crm, ecm):
        await end_connections(container.settings.database_url)
    await asyncio.sleep(0.2)  # the servers' goodbye reaches the pooled connections

    second = await handlers.create_organization(crm.uow(), user_id="u", name="ООО «Вторая»")
    async with crm.uow() as uow:
        assert (await uow.organizations.get(second.id)).name == "ООО «Вторая»"
    async with ecm.uow() as uow:
        assert await uow.documents.get("none") is None


async def test_a_call_that_finds_the_database_away_is_told_to_retry_not_given_a_500(tmp_path):
    """Nothing listens where the database should be (a restart under way): the API answers
    503 with Retry-After and a sentence, a page answers a page saying so; before, both
    answered 500 Internal Server Error, which told the caller it had done something wrong."""
    import httpx

    from crm_service.config import CrmSettings
    from crm_service.entrypoints.app import create_app as crm_app
    from deploy.broker import free_port
    from ecm_service.config import EcmSettings
    from ecm_service.entrypoints.app import create_app as ecm_app

    away = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/away"
    crm = crm_app(CrmSettings(database_url=away, files_dir=tmp_path / "files", imports_dir=tmp_path / "imports"))
    ecm = ecm_app(EcmSettings(database_url=away, content_dir=tmp_path / "content", imports_dir=tmp_path / "i"))
    from prometheus_client import REGISTRY

    def refused(service: str) -> float:
        return REGISTRY.get_sample_value("service_requests_refused_total",
                                         {"service": service, "reason": "database_unavailable"})

    before = {service: refused(service) for service in ("crm", "ecm")}
    headers = {"Authorization": "Bearer some-token"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=crm), base_url="http://crm") as client:
        api = await client.get("/api/organizations", headers=headers)
        page = await client.get("/ui/organizations", cookies={"session": "some-token"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ecm), base_url="http://ecm") as client:
        ecm_api = await client.get("/api/inbox", headers=headers)
    for answer in (api, ecm_api):
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        assert answer.json() == {"detail": "the database is unavailable for a moment; try again shortly"}
    assert page.status_code == 503 and page.headers["Retry-After"] == "5"
    assert "text/html" in page.headers["content-type"] and "the database is unavailable" in page.text
    assert {service: refused(service) - before[service] for service in before} == {"crm": 2, "ecm": 1}
    for app in (crm, ecm):
        await app.state.container.engine.dispose()
