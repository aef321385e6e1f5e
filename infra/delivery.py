"""Handling one consumed record, the same way in every consumer (the services'
aiokafka loops and the bridge's faust agents): parse, apply with bounded retries for
transient failures, and dead-letter what cannot be applied, with its error context."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from infra.dead_letters import DeadLetter, build_dead_letter
from infra.logs import bound_contextvars
from infra.retrying import AttemptsExhausted, PermanentError, call_with_retries
from schemas.registry import InvalidMessage, Message, parse_message

log = structlog.get_logger()


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class DeliveryPolicy:
    consumer: str
    accepted_types: frozenset[str]
    max_attempts: int = 5
    max_wait: float = 5.0


async def deliver(
    record: Record,
    policy: DeliveryPolicy,
    handler: Callable[[Message, str], Awaitable[None]],
    send_dead_letter: Callable[[DeadLetter], Awaitable[None]],
) -> bool:
    """Returns True when applied, False when dead-lettered. Never raises for bad data,
    so the partition moves on."""
    headers = dict(record.headers or ())
    correlation = headers.get("correlation_id", b"").decode(errors="replace") or None
    with bound_contextvars(correlation_id=correlation, topic=record.topic, partition=record.partition,
                           offset=record.offset):
        attempts = 1
        try:
            message = parse_message(record.value, policy.accepted_types)
            with bound_contextvars(correlation_id=message.envelope.correlation_id,
                                   message_id=str(message.envelope.event_id), message_type=message.envelope.type):
                await call_with_retries(lambda: handler(message, record.topic),
                                        attempts=policy.max_attempts, max_wait=policy.max_wait)
                log.info("message_applied")
            return True
        except AttemptsExhausted as exc:
            error, attempts = exc.last, exc.attempts
        except (InvalidMessage, PermanentError) as exc:
            error = exc
        letter = build_dead_letter(
            source_topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
            value=record.value, headers=record.headers, error=error, attempts=attempts, consumer=policy.consumer,
        )
        await send_dead_letter(letter)
        log.warning("message_dead_lettered", error_class=type(error).__name__, error=str(error)[:300],
                    dead_letter_topic=letter.topic, attempts=attempts)
        return False
