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


def _failed_attempts(consumer: str) -> float:
    from prometheus_client import REGISTRY

    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "bridge_delivery_failures"
               for sample in metric.samples
               if sample.name == "bridge_delivery_failures_total" and sample.labels.get("consumer") == consumer)


async def test_a_consumer_waits_out_a_database_restart_and_dead_letters_nothing(crm, broker):
    """The ECM reports a status while the CRM's database restarts (every connection reset,
    new ones refused for a while). The CRM's consumer tried each command 5 times in about
    3 s and then dead-lettered it: a good status left on the dead-letter topic, the rep's
    request stuck until someone replayed it. Now it waits for the database, however long,
    and applies the command when it is back; nothing goes to the dead-letter topic."""
    import uuid

    from sqlalchemy.engine import make_url

    from crm_service.bootstrap import bootstrap
    from deploy.local_run import LOCAL_SESSION_TIMEOUT_MS
    from infra.consumer_loop import ConsumerLoop
    from infra.kafka import ensure_topics
    from schemas import crm_commands
    from schemas.envelope import new_envelope
    from schemas.registry import encode
    from schemas.topics import dead_letter_topic
    from tests.integration.test_command_consumers import running
    from tests.support.kafka import produce, read_all
    from tests.support.polling import async_wait_until
    from tests.support.tcp_proxy import TcpProxy

    org = await handlers.create_organization(crm.uow(), user_id="u", name="Вектор")
    deal = await handlers.create_deal(crm.uow(), user_id="u", organization_id=org.id, title="Deal", funnel=crm.funnel)
    doc = await handlers.attach_document(crm.uow(), user_id="u", deal_id=deal.id, filename="c", doc_type="contract",
                                         content_type="text/plain", sha256="c" * 64, size=1)
    request = await handlers.request_approval(crm.uow(), user_id="u", deal_id=deal.id, document_id=doc.id,
                                              correlation_id="c")

    url = make_url(crm.settings.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.restore()
    through = bootstrap(crm.settings.model_copy(update={"database_url": url.set(
        host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)}))
    topic = f"it.{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, {topic: 1, dead_letter_topic(topic): 1})
    loop = ConsumerLoop(bootstrap_servers=broker, topic=topic, group_id=f"g-{topic}",
                        accepted_types=through.accepted_commands, handler=through.handle_command,
                        producer=crm.producer, max_attempts=2, batch_handler=through.handle_commands,
                        batch_size=through.settings.consumer_batch, session_timeout_ms=LOCAL_SESSION_TIMEOUT_MS)
    async with through.uow() as uow:  # a connection in the pool, through the proxy
        assert (await uow.approval_requests.get(request.id)).status == "requested"

    async def status() -> str:
        async with crm.uow() as uow:
            return (await uow.approval_requests.get(request.id)).status

    try:
        await proxy.cut()  # the restart begins
        await produce(broker, topic, encode(new_envelope(
            type=crm_commands.UPDATE_APPROVAL_STATUS, schema_version=2, source="it", correlation_id="c",
            payload=crm_commands.UpdateApprovalStatusV2(approval_request_id=request.id, status="in_progress",
                                                        stage="legal", revision=1, registry_approval_id="a-1"))),
            key=request.id.encode())
        async with running(loop):
            # Well past the 2 attempts after which the command used to be dead-lettered.
            await async_wait_until(lambda: _at_least(_failed_attempts(f"g-{topic}"), 4), timeout=60,
                                   message="the consumer trying while the database is away")
            assert await status() == "requested" and await read_all(broker, dead_letter_topic(topic)) == []
            await proxy.restore()  # the database is back
            await async_wait_until(lambda: _is(status, "in_progress"), timeout=30, message="the status applied")
        assert await read_all(broker, dead_letter_topic(topic)) == []
    finally:
        await proxy.cut()
        await through.engine.dispose()
        await through.producer.stop()  # made by the wiring, never started: the loop sends with crm's


async def _is(read, expected) -> bool:
    return await read() == expected


async def _at_least(value: float, floor: float) -> bool:
    return value >= floor
