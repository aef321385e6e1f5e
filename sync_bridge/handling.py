"""What the agents hand off to: turn one faust event into a delivered record, with
translation, document transfer, publishing and dead letters."""

from __future__ import annotations

import asyncio

import faust
import structlog

from infra.dead_letters import DeadLetter
from infra.delivery import DeliveryPolicy, Record, deliver
from infra.metrics import CONSUMER_LAG, MESSAGES_PUBLISHED, TRANSFER_BYTES, TRANSFERS
from schemas import crm_events
from schemas.registry import Message, encode
from sync_bridge.app import app, settings
from sync_bridge.control import CRM_TO_ECM as CRM_TO_ECM_DIRECTION
from sync_bridge.control import ECM_TO_CRM as ECM_TO_CRM_DIRECTION
from sync_bridge.control import DirectionGates
from sync_bridge.transfer import DocumentTransfer
from sync_bridge.translation import (
    ECM_EVENT_TRANSLATIONS,
    Outgoing,
    approval_requested_to_ecm,
    organizations_merged_to_ecm,
    responsibility_transferred_to_ecm,
)

log = structlog.get_logger()

CRM_TO_ECM = DeliveryPolicy(consumer=f"{settings.app_id}:crm-to-ecm",
                            accepted_types=frozenset({crm_events.APPROVAL_REQUESTED,
                                                      crm_events.RESPONSIBILITY_TRANSFERRED,
                                                      crm_events.ORGANIZATIONS_MERGED}),
                            max_attempts=settings.max_attempts, max_wait=settings.retry_max_wait)
ECM_TO_CRM = DeliveryPolicy(consumer=f"{settings.app_id}:ecm-to-crm",
                            accepted_types=frozenset(ECM_EVENT_TRANSLATIONS),
                            max_attempts=settings.max_attempts, max_wait=settings.retry_max_wait)

_transfer: DocumentTransfer | None = None
gates = DirectionGates()


def transfer() -> DocumentTransfer:
    global _transfer
    if _transfer is None:
        _transfer = DocumentTransfer(
            crm_url=settings.crm_url, crm_token=settings.crm_token or "", ecm_url=settings.ecm_url,
            ecm_token=settings.ecm_token or "", timeout=settings.http_timeout,
        )
    return _transfer


def as_record(event: faust.EventT, consumer: str) -> Record:
    m = event.message
    highwater = app.consumer.highwater(m.tp) if app.consumer else None
    if highwater is not None:
        CONSUMER_LAG.labels(consumer, m.topic, str(m.partition)).set(max(0, highwater - m.offset - 1))
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


async def when_approval_requested_start_in_ecm(message: Message, _topic: str) -> None:
    event: crm_events.ApprovalRequestedV2 = message.payload
    try:
        stored = await transfer().copy(event.document, correlation_id=message.envelope.correlation_id)
    except Exception:
        TRANSFERS.labels("failed").inc()
        raise
    TRANSFERS.labels("copied").inc()
    TRANSFER_BYTES.inc(event.document.size)
    log.info("document_transferred", crm_document_id=event.document.id, ecm_document_id=stored.document_id,
             size=event.document.size)
    await publish(approval_requested_to_ecm(message.envelope, event, stored))


async def when_crm_event_update_ecm(message: Message, topic: str) -> None:
    if message.envelope.type == crm_events.APPROVAL_REQUESTED:
        await when_approval_requested_start_in_ecm(message, topic)
    elif message.envelope.type == crm_events.ORGANIZATIONS_MERGED:
        await publish(organizations_merged_to_ecm(message.envelope, message.payload))
    else:
        await publish(responsibility_transferred_to_ecm(message.envelope, message.payload))


async def when_ecm_event_update_crm(message: Message, _topic: str) -> None:
    translate = ECM_EVENT_TRANSLATIONS[message.envelope.type]
    await publish(translate(message.envelope, message.payload))


async def handle_crm_event(event: faust.EventT) -> None:
    await gates.wait_open(CRM_TO_ECM_DIRECTION)
    await deliver(as_record(event, CRM_TO_ECM.consumer), CRM_TO_ECM, when_crm_event_update_ecm, send_dead_letter)


async def handle_ecm_event(event: faust.EventT) -> None:
    await gates.wait_open(ECM_TO_CRM_DIRECTION)
    await deliver(as_record(event, ECM_TO_CRM.consumer), ECM_TO_CRM, when_ecm_event_update_crm, send_dead_letter)


@app.task
async def follow_operator_decisions() -> None:
    while True:
        try:
            await gates.follow(settings.kafka_bootstrap_servers)
        except Exception as exc:  # broker away: keep the last known state, read again
            log.warning("control_follow_failed", error=str(exc), error_class=type(exc).__name__)
            await asyncio.sleep(1.0)


async def handle_until_done(handle, event: faust.EventT) -> None:
    """`deliver` only raises when even the dead letter cannot be written (the broker is
    away). Trying again, in place, keeps the partition's order and loses nothing; letting
    the exception out would stop the agent for good."""
    while True:
        try:
            await handle(event)
            return
        except Exception as exc:
            log.error("event_handling_failed_retrying", error=str(exc)[:300], error_class=type(exc).__name__,
                      topic=event.message.topic, partition=event.message.partition, offset=event.message.offset)
            await asyncio.sleep(1.0)
