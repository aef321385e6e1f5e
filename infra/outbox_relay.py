"""Publishes outbox rows to Kafka in batches, in commit order, and marks them sent.

At-least-once: a crash between publishing and marking republishes the batch; every
consumer dedupes by event id.

A relay starts its next batch as soon as a unit of work of its own process commits
outbox rows (`outbox_committed`), and otherwise every `poll_interval` (rows another
process wrote: a replica's, an operator's replay). Rows committed while a batch is
being published go in the next one, so under load the batches grow on their own, and
at low load an event leaves within milliseconds of its commit instead of after the
rest of a poll interval.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timezone

import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy import Table, any_, bindparam, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import async_sessionmaker

from infra.metrics import MESSAGES_PUBLISHED, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE
from infra.outbox_admin import unsent_backlog

log = structlog.get_logger()

BACKLOG_REFRESH_SECONDS = 5.0

_waiting: dict[Table, set[asyncio.Event]] = {}


def outbox_committed(outbox: Table) -> None:
    """A transaction of this process committed rows into `outbox`: its relays start
    their next batch now instead of at their next poll."""
    for wake in _waiting.get(outbox, ()):
        wake.set()


class OutboxRelay:
    def __init__(
        self,
        session_factory: async_sessionmaker,
        outbox: Table,
        producer: AIOKafkaProducer,
        *,
        service: str,
        batch_size: int = 500,
        poll_interval: float = 0.1,
    ):
        self._service = service
        self._sessions = session_factory
        self._outbox = outbox
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._built: tuple | None = None  # (read, mark) for the database's dialect

    def _statements(self, dialect: str) -> tuple:
        """The batch's read and its mark, built once per relay (building a statement on
        every round cost as much CPU as running it)."""
        if self._built is not None:
            return self._built
        o = self._outbox
        oldest = (select(o.c.id, o.c.event_id, o.c.topic, o.c.message_key, o.c.message_type, o.c.correlation_id,
                         o.c.body)
                  .where(o.c.published_at.is_(None)).order_by(o.c.id).limit(self._batch_size))
        if dialect == "postgresql":
            # Several relay replicas may run; each takes its own rows.
            oldest = oldest.with_for_update(skip_locked=True)
            ids = o.c.id == any_(bindparam("ids", type_=ARRAY(o.c.id.type)))
        else:
            ids = o.c.id.in_(bindparam("ids", expanding=True))
        self._built = oldest, update(o).where(ids).values(published_at=bindparam("now"))
        return self._built

    async def publish_batch(self) -> int:
        async with self._sessions() as session, session.begin():
            oldest, mark = self._statements(session.bind.dialect.name)
            rows = (await session.execute(oldest)).all()
            if not rows:
                return 0
            send = self._producer.send
            pending = [
                await send(topic, value=body.encode(), key=key.encode(),
                           headers=[("event_id", event_id.encode()), ("type", message_type.encode()),
                                    ("correlation_id", correlation_id.encode())])
                for _, event_id, topic, key, message_type, correlation_id, body in rows
            ]
            await asyncio.gather(*pending)
            await session.execute(mark, {"ids": [row.id for row in rows], "now": datetime.now(timezone.utc)})
        for (topic, message_type), count in Counter((row.topic, row.message_type) for row in rows).items():
            MESSAGES_PUBLISHED.labels(self._service, topic, message_type).inc(count)
        log.debug("outbox_published", count=len(rows))
        return len(rows)

    async def refresh_backlog_metrics(self) -> None:
        async with self._sessions() as session:
            count, age = await unsent_backlog(session, self._outbox)
        OUTBOX_BACKLOG.labels(self._service).set(count)
        OUTBOX_OLDEST_AGE.labels(self._service).set(age)

    async def run_forever(self) -> None:
        next_refresh = 0.0
        wake = asyncio.Event()
        _waiting.setdefault(self._outbox, set()).add(wake)
        try:
            while True:
                wake.clear()  # a commit from here on wakes the next round
                try:
                    if asyncio.get_running_loop().time() >= next_refresh:
                        await self.refresh_backlog_metrics()
                        next_refresh = asyncio.get_running_loop().time() + BACKLOG_REFRESH_SECONDS
                    sent = await self.publish_batch()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker or DB away: keep the rows, try again
                    log.warning("outbox_publish_failed", error=str(exc), error_class=type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                if sent < self._batch_size:
                    try:
                        async with asyncio.timeout(self._poll_interval):
                            await wake.wait()
                    except TimeoutError:
                        pass
        finally:
            _waiting[self._outbox].discard(wake)
