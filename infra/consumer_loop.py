"""The consume loop the services run: the valid commands of a consumed batch are applied
together, `batch_size` at a time, in one transaction each (`batch_handler`, through
infra.delivery.apply_together); a garbage record, or a group whose transaction fails,
goes record by record through infra.delivery.deliver (retries, dead letters). Offsets
are committed per batch, after the effects and dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from infra.dead_letters import DeadLetter
from infra.delivery import BatchHandler, DeliveryPolicy, Record, apply_together, count_from_zero, deliver
from infra.metrics import LagReport
from schemas.registry import Message

log = structlog.get_logger()

Handler = Callable[[Message, str], Awaitable[None]]


class ConsumerLoop:
    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        accepted_types: frozenset[str],
        handler: Handler,
        producer: AIOKafkaProducer,
        max_attempts: int = 5,
        batch_handler: BatchHandler | None = None,
        batch_size: int = 1,
        fetch_max_wait_ms: int = 500,
        session_timeout_ms: int = 10_000,
    ):
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._group_id = group_id
        self._policy = DeliveryPolicy(consumer=group_id, accepted_types=accepted_types, max_attempts=max_attempts)
        count_from_zero(self._policy, topic)
        self._lag = LagReport(group_id)
        self._handler = handler
        self._batch_handler = batch_handler
        self._batch_size = batch_size if batch_handler is not None else 1
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._session_timeout_ms = session_timeout_ms
        self._producer = producer
        self.consumer: AIOKafkaConsumer | None = None

    def _make_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=1000,
            rebalance_timeout_ms=10000,
            max_poll_interval_ms=300000,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )

    async def run_forever(self) -> None:
        while True:
            self.consumer = self._make_consumer()
            try:
                await self.consumer.start()
                log.info("consumer_started", topic=self._topic, group=self._group_id)
                while True:
                    batch = await self.consumer.getmany(timeout_ms=500, max_records=500)
                    # All partitions' records in one list, each partition's in order: under
                    # a steady load a fetch holds a few records per partition, and one
                    # group for all of them is one transaction instead of one per partition.
                    await self.handle_records([r for records in batch.values() for r in records])
                    if batch:
                        await self.consumer.commit()
                        self._report_lag(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker gone: start over from the committed offsets
                log.warning("consumer_restarting", topic=self._topic, error=str(exc), error_class=type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                await self.consumer.stop()

    def _report_lag(self, batch) -> None:
        for tp in batch:
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self._lag.set(tp.topic, tp.partition, max(0, highwater - (batch[tp][-1].offset + 1)))
        self._lag.keep_only({(tp.topic, tp.partition) for tp in self.consumer.assignment()})

    async def handle_records(self, records: list[ConsumerRecord]) -> None:
        """A fetch's records, each partition's in order (groups may mix partitions)."""
        records = [Record(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or ())) for r in records]
        for start in range(0, len(records), self._batch_size):
            group = records[start:start + self._batch_size]
            if len(group) > 1:
                group = await apply_together(group, self._policy, self._batch_handler)
            for record in group:
                await self.handle_record(record)

    async def handle_record(self, record: Record) -> None:
        await deliver(record, self._policy, self._handler, self._send_dead_letter)

    async def _send_dead_letter(self, letter: DeadLetter) -> None:
        await self._producer.send_and_wait(letter.topic, value=letter.value, key=letter.key, headers=letter.headers)
