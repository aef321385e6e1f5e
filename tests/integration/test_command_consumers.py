"""The services' consumers on the real broker and real databases: each command is
applied once however often it arrives, bad messages are dead-lettered with their
context, and the partition keeps moving."""

import asyncio
import io
import json
import uuid
from contextlib import asynccontextmanager

from sqlalchemy import func, select

from crm_service.adapters import tables as crm_tables
from crm_service.service_layer import handlers as crm_handlers
from deploy.local_run import LOCAL_SESSION_TIMEOUT_MS
from ecm_service.adapters import tables as ecm_tables
from ecm_service.service_layer.documents import store_version
from infra.consumer_loop import ConsumerLoop
from infra.dead_letters import error_context
from infra.kafka import ensure_topics
from schemas import crm_commands, ecm_commands
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import encode
from schemas.topics import dead_letter_topic
from tests.support.kafka import produce, read_all
from tests.support.polling import async_wait_until

SHA_TEXT = b"signed contract"


async def _private_loop(container, broker):
    """The service's own command handling (commands of a batch applied together, as the
    service wires it), pointed at a topic of this test's own."""
    topic = f"it.{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, {topic: 3, dead_letter_topic(topic): 1})
    loop = ConsumerLoop(bootstrap_servers=broker, topic=topic, group_id=f"g-{topic}",
                        accepted_types=container.accepted_commands, handler=container.handle_command,
                        producer=container.producer, max_attempts=2, batch_handler=container.handle_commands,
                        batch_size=container.settings.consumer_batch,
                        session_timeout_ms=LOCAL_SESSION_TIMEOUT_MS)  # as make run's: a quicker join
    return topic, loop


@asynccontextmanager
async def running(loop):
    """The consumer loop runs while the block waits for what it should have done."""
    task = asyncio.create_task(loop.run_forever())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _count(container, table, *where):
    async with container.session_factory() as session:
        return await session.scalar(select(func.count()).select_from(table).where(*where))


async def test_ecm_applies_commands_once_and_dead_letters_garbage(ecm, broker):
    topic, loop = await _private_loop(ecm, broker)
    sha, size = ecm.content_store.put(io.BytesIO(SHA_TEXT), max_bytes=10**6)
    doc, version, _ = await store_version(ecm.uow(), user_id="it", doc_type="contract", title="c", filename="c.txt",
                                          content_type="text/plain", sha256=sha, size=size, external_ref=None)
    org_ref = ExternalRef(system="crm", id=str(uuid.uuid4()))
    sync = new_envelope(type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="it", correlation_id="c",
                        payload=ecm_commands.SyncCounterpartyV1(external_ref=org_ref, name="Вектор"))
    start = new_envelope(type=ecm_commands.START_APPROVAL, schema_version=1, source="it", correlation_id="c",
                         payload=ecm_commands.StartApprovalV1(
                             external_ref=ExternalRef(system="crm", id="req-1"), counterparty_ref=org_ref,
                             initiator_ref=ExternalRef(system="crm", id="u"), document_id=doc["id"],
                             document_version_id=version["id"], sha256=sha, doc_type="contract", title="t"))
    key = org_ref.id.encode()
    for raw in (encode(sync), encode(start), b"{garbage", encode(sync), encode(start)):
        await produce(broker, topic, raw, key=key)

    async with running(loop):
        await async_wait_until(lambda: _count(ecm, ecm_tables.inbox), timeout=60, message="commands applied")
        await async_wait_until(lambda: read_all(broker, dead_letter_topic(topic)), timeout=30, message="dead letter")
        # The duplicates after the garbage were read too: the partition was not blocked.
        await async_wait_until(lambda: _consumed_all(loop, topic, 5), timeout=30, message="all 5 consumed")

    assert await _count(ecm, ecm_tables.counterparties) == 1
    assert await _count(ecm, ecm_tables.approvals) == 1
    assert await _count(ecm, ecm_tables.inbox) == 2
    assert await _count(ecm, ecm_tables.outbox, ecm_tables.outbox.c.message_type == "ecm.approval_status_changed") == 1
    async with ecm.session_factory() as session:
        status = await session.scalar(select(ecm_tables.counterparties.c.status))
        flags = await session.scalar(select(ecm_tables.counterparties.c.quality_flags))
    assert status == "pending_verification" and flags == ["inn_missing", "ogrn_missing", "kpp_missing"]
    (letter,) = await read_all(broker, dead_letter_topic(topic))
    ctx = error_context(letter.headers)
    assert letter.value == b"{garbage" and ctx["error.class"] == "InvalidMessage" and ctx["source.topic"] == topic


async def test_ecm_a_failing_command_in_a_batch_costs_the_others_nothing(ecm, broker):
    """Applied together, one command that cannot be applied would undo the batch: the
    batch is then applied one by one, the bad one dead-lettered with its reason."""
    topic, loop = await _private_loop(ecm, broker)
    refs = [ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(3)]

    def sync(ref, name):
        return encode(new_envelope(type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="it",
                                   correlation_id="c", payload=ecm_commands.SyncCounterpartyV1(external_ref=ref,
                                                                                               name=name)))
    bad = encode(new_envelope(type=ecm_commands.START_APPROVAL, schema_version=1, source="it", correlation_id="c",
                              payload=ecm_commands.StartApprovalV1(
                                  external_ref=ExternalRef(system="crm", id="req-x"), counterparty_ref=refs[0],
                                  initiator_ref=ExternalRef(system="crm", id="u"), document_id="no-such-document",
                                  document_version_id="no-such-version", sha256="0" * 64, doc_type="contract",
                                  title="t")))
    for raw in (sync(refs[0], "Альфа"), sync(refs[1], "Бета"), bad, sync(refs[2], "Гамма")):
        await produce(broker, topic, raw, key=b"one-partition")
    async with running(loop):
        await async_wait_until(lambda: read_all(broker, dead_letter_topic(topic)), timeout=60, message="dead letter")
        await async_wait_until(lambda: _consumed_all(loop, topic, 4), timeout=30, message="all 4 consumed")
    assert await _count(ecm, ecm_tables.counterparties) == 3
    assert await _count(ecm, ecm_tables.approvals) == 0
    assert await _count(ecm, ecm_tables.inbox) == 3
    (letter,) = await read_all(broker, dead_letter_topic(topic))
    assert letter.value == bad and "no-such-version" in error_context(letter.headers)["error.message"]


async def _consumed_all(loop, topic, expected):
    committed = 0
    for tp in loop.consumer.assignment() if loop.consumer else ():
        committed += (await loop.consumer.committed(tp)) or 0
    return committed >= expected


async def test_crm_status_updates_are_idempotent_and_never_go_backwards(crm, broker):
    topic, loop = await _private_loop(crm, broker)
    org = await crm_handlers.create_organization(crm.uow(), user_id="u", name="Вектор")
    deal = await crm_handlers.create_deal(crm.uow(), user_id="u", organization_id=org.id,
                                          title="Deal", funnel=crm.funnel)
    doc = await crm_handlers.attach_document(crm.uow(), user_id="u", deal_id=deal.id, filename="c", doc_type="contract",
                                             content_type="text/plain", sha256="c" * 64, size=1)
    request = await crm_handlers.request_approval(crm.uow(), user_id="u", deal_id=deal.id, document_id=doc.id,
                                                  correlation_id="c")

    def update(status, stage, revision):
        return encode(new_envelope(
            type=crm_commands.UPDATE_APPROVAL_STATUS, schema_version=1, source="it", correlation_id="c",
            payload=crm_commands.UpdateApprovalStatusV1(approval_request_id=request.id, status=status, stage=stage,
                                                        revision=revision, registry_approval_id="a")))

    approved = update("approved", None, 4)
    for raw in (update("in_progress", "legal", 1), approved, update("in_progress", "finance", 3), approved,
                json.dumps({"type": "crm.update_approval_status"}).encode()):
        await produce(broker, topic, raw, key=org.id.encode())

    async with running(loop):
        await async_wait_until(lambda: read_all(broker, dead_letter_topic(topic)), timeout=60, message="dead letter")
    async with crm.uow() as uow:
        stored = await uow.approval_requests.get(request.id)
    assert (stored.status, stored.stage, stored.revision) == ("approved", None, 4)
    assert await _count(crm, crm_tables.inbox) == 3  # the replayed "approved" was recognised
