"""What the agents hand off to: turn a batch of faust events (of all the partitions the
worker is assigned, each partition's in order) into delivered records, with translation,
document transfer, publishing and dead letters. A batch's valid events are handled
together (their small documents copied in two HTTP calls, their commands sent at once);
garbage, and every event of a batch that failed as a whole, go one by one with their own
retries and dead letters."""

from __future__ import annotations

import asyncio
import uuid

import faust
import structlog

from infra.dead_letters import DeadLetter
from infra.delivery import DeliveryPolicy, Record, apply_together, count_from_zero, deliver
from infra.logs import error_text
from infra.metrics import (
    BATCH_EVENTS,
    MESSAGES_PUBLISHED,
    TRANSFER_BYTES,
    TRANSFERS,
    LagReport,
    count_published_from_zero,
)
from schemas import crm_events
from schemas.registry import Message, encode
from schemas.topics import CRM_COMMANDS, CRM_EVENTS, ECM_COMMANDS, ECM_EVENTS
from sync_bridge.app import app, settings
from sync_bridge.control import CRM_TO_ECM as CRM_TO_ECM_DIRECTION
from sync_bridge.control import ECM_TO_CRM as ECM_TO_CRM_DIRECTION
from sync_bridge.control import DirectionGates
from sync_bridge.transfer import BatchLimits, DocumentTransfer, plan_batches
from sync_bridge.translation import (
    ECM_EVENT_TRANSLATIONS,
    Outgoing,
    StoredDocument,
    approval_requested_to_ecm,
    approval_withdrawn_to_ecm,
    organizations_merged_to_ecm,
    responsibility_transferred_to_ecm,
)

log = structlog.get_logger()

CRM_TO_ECM = DeliveryPolicy(consumer=f"{settings.app_id}:crm-to-ecm",
                            accepted_types=frozenset({crm_events.APPROVAL_REQUESTED,
                                                      crm_events.RESPONSIBILITY_TRANSFERRED,
                                                      crm_events.ORGANIZATIONS_MERGED,
                                                      crm_events.DOCUMENT_VERSION_ADDED,
                                                      crm_events.APPROVAL_WITHDRAWN}),
                            max_attempts=settings.max_attempts, max_wait=settings.retry_max_wait)
ECM_TO_CRM = DeliveryPolicy(consumer=f"{settings.app_id}:ecm-to-crm",
                            accepted_types=frozenset(ECM_EVENT_TRANSLATIONS),
                            max_attempts=settings.max_attempts, max_wait=settings.retry_max_wait)
count_from_zero(CRM_TO_ECM, CRM_EVENTS)
count_from_zero(ECM_TO_CRM, ECM_EVENTS)
count_published_from_zero("bridge", ECM_COMMANDS)
count_published_from_zero("bridge", CRM_COMMANDS)

_transfer: DocumentTransfer | None = None
gates = DirectionGates()
LIMITS = BatchLimits(document_bytes=settings.batch_document_bytes, batch_bytes=settings.batch_bytes,
                     documents=settings.batch_size)


def transfer() -> DocumentTransfer:
    global _transfer
    if _transfer is None:
        _transfer = DocumentTransfer(
            crm_url=settings.crm_url, crm_token=settings.crm_token or "", ecm_url=settings.ecm_url,
            ecm_token=settings.ecm_token or "", timeout=settings.http_timeout,
        )
    return _transfer


# bridge_consumer_lag of each direction's consumer; the /metrics page drops the partitions
# this worker no longer holds (sync_bridge/web.py).
LAG_REPORTS = {policy.consumer: LagReport(policy.consumer) for policy in (CRM_TO_ECM, ECM_TO_CRM)}


def as_record(event: faust.EventT, consumer: str) -> Record:
    m = event.message
    highwater = app.consumer.highwater(m.tp) if app.consumer else None
    if highwater is not None:
        LAG_REPORTS[consumer].set(m.topic, m.partition, max(0, highwater - m.offset - 1))
    headers = list(m.headers.items()) if isinstance(m.headers, dict) else list(m.headers or ())
    return Record(m.topic, m.partition, m.offset, m.key, m.value, headers)


async def publish(commands: list[Outgoing]) -> None:
    """All commands are handed to the producer at once (it keeps their order within a
    partition), then every broker ack is awaited before the source offset can be committed."""
    acks = [await app.producer.send(
        command.topic, command.key.encode(), encode(command.envelope), None, None,
        [("event_id", str(command.envelope.event_id).encode()), ("type", command.envelope.type.encode()),
         ("correlation_id", command.envelope.correlation_id.encode())],
    ) for command in commands]
    await asyncio.gather(*acks)
    for command in commands:
        MESSAGES_PUBLISHED.labels("bridge", command.topic, command.envelope.type).inc()
        log.info("command_sent", command_type=command.envelope.type, command_id=str(command.envelope.event_id))


async def send_dead_letter(letter: DeadLetter) -> None:
    await app.producer.send_and_wait(letter.topic, letter.key, letter.value, None, None, letter.headers)


def _transferred(document, stored: StoredDocument, **fields) -> None:
    TRANSFERS.labels("copied").inc()
    TRANSFER_BYTES.inc(document.size)
    log.info("document_transferred", crm_document_id=document.id, ecm_document_id=stored.document_id,
             size=document.size, **fields)


async def copy_document(document, correlation_id: str) -> StoredDocument:
    try:
        stored = await transfer().copy(document, correlation_id=correlation_id)
    except Exception:
        TRANSFERS.labels("failed").inc()
        raise
    _transferred(document, stored)
    return stored


async def when_approval_requested_start_in_ecm(message: Message, _topic: str) -> None:
    event: crm_events.ApprovalRequestedV2 = message.payload
    stored = await copy_document(event.document, message.envelope.correlation_id)
    await publish(approval_requested_to_ecm(message.envelope, event, stored))


async def when_document_version_added_store_it_in_ecm(message: Message, _topic: str) -> None:
    """The new file goes to the ECM as the next version of the same document (its external
    ref); storing it there moves the document's approvals in flight to it, and their
    status comes back as any other. No command is needed."""
    event: crm_events.DocumentVersionAddedV1 = message.payload
    stored = await copy_document(event.document, message.envelope.correlation_id)
    log.info("document_version_sent", approval_request_id=event.approval_request_id, version_no=event.version_no,
             ecm_version_id=stored.version_id)


async def when_crm_event_update_ecm(message: Message, topic: str) -> None:
    if message.envelope.type == crm_events.APPROVAL_REQUESTED:
        await when_approval_requested_start_in_ecm(message, topic)
    elif message.envelope.type == crm_events.DOCUMENT_VERSION_ADDED:
        await when_document_version_added_store_it_in_ecm(message, topic)
    elif message.envelope.type == crm_events.ORGANIZATIONS_MERGED:
        await publish(organizations_merged_to_ecm(message.envelope, message.payload))
    elif message.envelope.type == crm_events.APPROVAL_WITHDRAWN:
        await publish(approval_withdrawn_to_ecm(message.envelope, message.payload))
    else:
        await publish(responsibility_transferred_to_ecm(message.envelope, message.payload))


async def copy_documents(messages: list[Message]) -> dict[str, StoredDocument]:
    """The documents of a batch's approval requests into the ECM: the small ones in
    batches of two HTTP calls, the rest (and any a batch left out) one by one. Raises
    when one cannot be copied (the batch then goes one event at a time)."""
    wanted = [m.payload.document for m in messages if m.envelope.type == crm_events.APPROVAL_REQUESTED]
    batches, alone = plan_batches(wanted, LIMITS)
    stored: dict[str, StoredDocument] = {}
    for batch in batches:
        batch_id = f"batch-{uuid.uuid4()}"  # one call carries many flows: its own correlation id
        copied = await transfer().copy_batch(batch, correlation_id=batch_id)
        for document in batch:
            if document.id in copied:
                stored[document.id] = copied[document.id]
                _transferred(document, copied[document.id], batch=batch_id)
            else:
                alone.append(document)
    by_id = {m.payload.document.id: m for m in messages if m.envelope.type == crm_events.APPROVAL_REQUESTED}
    for document in alone:
        stored[document.id] = await copy_document(document, by_id[document.id].envelope.correlation_id)
    return stored


async def when_crm_events_update_ecm(messages: list[Message], _topic: str) -> None:
    stored = await copy_documents(messages)
    commands: list[Outgoing] = []
    for message in messages:
        if message.envelope.type == crm_events.APPROVAL_REQUESTED:
            commands += approval_requested_to_ecm(message.envelope, message.payload,
                                                  stored[message.payload.document.id])
        elif message.envelope.type == crm_events.DOCUMENT_VERSION_ADDED:
            # after the batch's first versions; an approval this batch starts binds to it
            # when the ECM starts it (ecm_service.service_layer.approvals.start_approval)
            await when_document_version_added_store_it_in_ecm(message, _topic)
        elif message.envelope.type == crm_events.ORGANIZATIONS_MERGED:
            commands += organizations_merged_to_ecm(message.envelope, message.payload)
        elif message.envelope.type == crm_events.APPROVAL_WITHDRAWN:
            commands += approval_withdrawn_to_ecm(message.envelope, message.payload)
        else:
            commands += responsibility_transferred_to_ecm(message.envelope, message.payload)
    await publish(commands)


async def when_ecm_event_update_crm(message: Message, _topic: str) -> None:
    translate = ECM_EVENT_TRANSLATIONS[message.envelope.type]
    await publish(translate(message.envelope, message.payload))


async def when_ecm_events_update_crm(messages: list[Message], _topic: str) -> None:
    await publish([command for message in messages
                   for command in ECM_EVENT_TRANSLATIONS[message.envelope.type](message.envelope, message.payload)])


async def _handle(events: list[faust.EventT], direction: str, policy: DeliveryPolicy, together, one) -> None:
    await gates.wait_open(direction)
    BATCH_EVENTS.labels(direction).observe(len(events))
    records = [as_record(event, policy.consumer) for event in events]
    if len(records) > 1:
        records = await apply_together(records, policy, together)
    for record in records:
        await deliver(record, policy, one, send_dead_letter)


async def handle_crm_events(events: list[faust.EventT]) -> None:
    await _handle(events, CRM_TO_ECM_DIRECTION, CRM_TO_ECM, when_crm_events_update_ecm, when_crm_event_update_ecm)


async def handle_ecm_events(events: list[faust.EventT]) -> None:
    await _handle(events, ECM_TO_CRM_DIRECTION, ECM_TO_CRM, when_ecm_events_update_crm, when_ecm_event_update_crm)


@app.task
async def follow_operator_decisions() -> None:
    while True:
        try:
            await gates.follow(settings.kafka_bootstrap_servers)
        except Exception as exc:  # broker away: keep the last known state, read again
            log.warning("control_follow_failed", error=str(exc), error_class=type(exc).__name__)
            await asyncio.sleep(1.0)


async def handle_until_done(handle, events: list[faust.EventT]) -> None:
    """`deliver` only raises when even the dead letter cannot be written (the broker is
    away). Trying the batch again, in place, keeps the partition's order and loses
    nothing (what was done already dedupes downstream); letting the exception out would
    stop the agent for good."""
    while True:
        try:
            await handle(events)
            return
        except Exception as exc:
            first = events[0].message
            log.error("event_handling_failed_retrying", error=error_text(exc), error_class=type(exc).__name__,
                      topic=first.topic, partition=first.partition, offset=first.offset, events=len(events))
            await asyncio.sleep(1.0)
