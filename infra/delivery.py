"""Handling consumed records, the same way in every consumer (the services' aiokafka
loops and the bridge's faust agents): a group's valid messages applied together when the
consumer can (`apply_together`); otherwise, and for whatever a group leaves, one record at
a time (`deliver`): parse, apply with bounded retries for transient failures, and
dead-letter what cannot be applied, with its error context."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from infra.dead_letters import DeadLetter, build_dead_letter
from infra.logs import bound_contextvars, error_text
from infra.metrics import DELIVERY_FAILURES, HANDLER_SECONDS, MESSAGES_CONSUMED
from infra.retrying import AttemptsExhausted, PermanentError, call_with_retries
from schemas.registry import InvalidMessage, Message, parse_message

log = structlog.get_logger()

BatchHandler = Callable[[list[Message], str], Awaitable[None]]  # all applied, or none (raises)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


INVALID_TYPE = "invalid"  # the type label of a dead letter whose type the consumer does not accept


@dataclass(frozen=True)
class DeliveryPolicy:
    consumer: str
    accepted_types: frozenset[str]
    max_attempts: int = 5
    max_wait: float = 5.0


def count_from_zero(policy: DeliveryPolicy, topic: str) -> None:
    """Creates the consumer's counts at 0 for every outcome it can label (Prometheus's
    advice for label values known in advance): `applied` for every type it accepts,
    `dead_lettered` for those and for `invalid`. A series born at its first increment
    shows no increase, so without them a dashboard's increase() never charts the first
    dead letter of a type, and when a consumer's first messages of a type arrive in one
    batch (it was behind) rate() reads it as idle while the producer's count rises."""
    for message_type in policy.accepted_types:
        MESSAGES_CONSUMED.labels(policy.consumer, topic, message_type, "applied")
    for message_type in (*policy.accepted_types, INVALID_TYPE):
        MESSAGES_CONSUMED.labels(policy.consumer, topic, message_type, "dead_lettered")


def count_applied(policy: DeliveryPolicy, topic: str, message_type: str, seconds: float, **fields) -> None:
    """The log line and metrics of one applied message (its context already bound)."""
    log.info("message_applied", **fields)
    MESSAGES_CONSUMED.labels(policy.consumer, topic, message_type, "applied").inc()
    HANDLER_SECONDS.labels(policy.consumer, message_type).observe(seconds)


async def deliver(
    record: Record,
    policy: DeliveryPolicy,
    handler: Callable[[Message, str], Awaitable[None]],
    send_dead_letter: Callable[[DeadLetter], Awaitable[None]],
) -> bool:
    """Returns True when applied, False when dead-lettered. Never raises for bad data,
    so the partition moves on."""
    started = time.perf_counter()
    headers = dict(record.headers or ())
    correlation = headers.get("correlation_id", b"").decode(errors="replace") or None
    with bound_contextvars(correlation_id=correlation, topic=record.topic, partition=record.partition,
                           offset=record.offset):
        attempts, message_type = 1, headers.get("type", b"unknown").decode(errors="replace")[:100]
        try:
            message = parse_message(record.value, policy.accepted_types)
            message_type = message.envelope.type
            with bound_contextvars(correlation_id=message.envelope.correlation_id,
                                   message_id=str(message.envelope.event_id), message_type=message.envelope.type):
                _, attempts = await call_with_retries(
                    lambda: handler(message, record.topic), attempts=policy.max_attempts, max_wait=policy.max_wait,
                    on_failure=lambda exc: DELIVERY_FAILURES.labels(
                        policy.consumer, record.topic, message_type, type(exc).__name__).inc(),
                )
                count_applied(policy, record.topic, message_type, time.perf_counter() - started, attempts=attempts)
            return True
        except AttemptsExhausted as exc:  # each failed attempt was counted as it happened
            error, attempts = exc.last, exc.attempts
        except (InvalidMessage, PermanentError) as exc:
            error = exc
            if message_type not in policy.accepted_types:
                message_type = INVALID_TYPE  # keep label values bounded
            DELIVERY_FAILURES.labels(policy.consumer, record.topic, message_type, type(error).__name__).inc()
        letter = build_dead_letter(
            source_topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
            value=record.value, headers=record.headers, error=error, attempts=attempts, consumer=policy.consumer,
        )
        await send_dead_letter(letter)
        MESSAGES_CONSUMED.labels(policy.consumer, record.topic, message_type, "dead_lettered").inc()
        log.warning("message_dead_lettered", error_class=type(error).__name__, error=error_text(error),
                    dead_letter_topic=letter.topic, attempts=attempts)
        return False


async def apply_together(records: list[Record], policy: DeliveryPolicy, batch_handler: BatchHandler) -> list[Record]:
    """Applies the valid messages of a group of records (each partition's in order) with one call of
    `batch_handler`; returns the records still to deliver one by one: the garbage (to be
    dead-lettered), or all of them when the call failed (then each gets its own retries
    or dead letter; handlers are idempotent, so what the failed call did is harmless)."""
    valid, garbage = [], []
    for record in records:
        try:
            valid.append((record, parse_message(record.value, policy.accepted_types)))
        except InvalidMessage:
            garbage.append(record)
    if len(valid) < 2:
        return records
    started = time.perf_counter()
    try:
        await batch_handler([message for _, message in valid], records[0].topic)
    except Exception as exc:
        log.info("batch_applied_one_by_one", messages=len(valid), error_class=type(exc).__name__,
                 error=error_text(exc))
        return records
    seconds = (time.perf_counter() - started) / len(valid)
    for record, message in valid:
        with bound_contextvars(correlation_id=message.envelope.correlation_id, topic=record.topic,
                               partition=record.partition, offset=record.offset,
                               message_id=str(message.envelope.event_id), message_type=message.envelope.type):
            count_applied(policy, record.topic, message.envelope.type, seconds, attempts=1, batch=len(valid))
    return garbage
