"""The unit of work owns the session and the transaction; nothing else commits.
It also writes outbox rows and inbox marks inside that same transaction: gathered as
they come and inserted together, one statement per table, just before the commit
(nothing reads them back within the transaction). An outbox row's envelope is encoded
then too, after the subclass's `_before_commit` (the ECM writes its history there, and
a counterparty event carries the history entry's number)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from functools import cache
from typing import Any

from sqlalchemy import MetaData, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.outbox_relay import outbox_committed
from infra.table_repository import insert_into
from schemas.envelope import Envelope
from schemas.registry import encode


@cache
def _table_order(metadata: MetaData) -> dict[Table, int]:
    """Each table's place with parents before children (by foreign keys)."""
    return {table: i for i, table in enumerate(metadata.sorted_tables)}


class WriteBehindSession:
    """The unit of work's session as its repositories see it. Rows handed to
    `insert_later` wait, and go out together, one statement per table (parents before
    children, by the tables' foreign keys), just before the next statement of any kind
    on this session, the hand-out of its connection, or the commit. So whatever runs
    next, reads included, sees them as if they had been inserted at once, and a batch
    of commands that each add a few rows costs a few statements instead of a few per
    command: each statement is a wait, and under load an await takes tens of
    milliseconds to come back (bench/RESULTS.md, ADR 0012). A row that breaks a
    constraint fails the statement that flushes it (or the commit), not `insert_later`.
    Rows handed to `execute_later` (updates) go out after the inserts."""

    def __init__(self, session: AsyncSession):
        self._session = session
        self._later: dict[Table, list[dict]] = {}
        self._updates: dict[object, list[dict]] = {}  # statement -> parameter sets, in order

    def insert_later(self, table: Table, rows: dict | list[dict]) -> None:
        if rows:  # (an empty list: nothing to insert)
            self._later.setdefault(table, []).extend([rows] if isinstance(rows, dict) else rows)

    def execute_later(self, statement, params: dict) -> None:
        """An UPDATE (or DELETE) run with the waiting inserts, after them; the same
        statement's parameter sets go together (one executemany, in order). For changes
        to rows the transaction already read and locked."""
        self._updates.setdefault(statement, []).append(params)

    async def flush(self) -> None:
        """Writes what waits (nothing when nothing does)."""
        while self._later or self._updates:
            later, self._later = self._later, {}
            updates, self._updates = self._updates, {}
            if later:
                order = _table_order(next(iter(later)).metadata)
                for table in sorted(later, key=lambda t: order.get(t, len(order))):
                    await self._session.execute(insert_into(table), later[table])
            for statement, params in updates.items():
                await self._session.execute(statement, params)

    def _after_flush(name: str):
        async def method(self, *args, **kwargs):
            await self.flush()
            return await getattr(self._session, name)(*args, **kwargs)
        method.__name__ = name
        return method

    execute = _after_flush("execute")
    scalar = _after_flush("scalar")
    scalars = _after_flush("scalars")
    connection = _after_flush("connection")
    commit = _after_flush("commit")
    del _after_flush

    async def rollback(self) -> None:
        self._later, self._updates = {}, {}
        await self._session.rollback()

    def __getattr__(self, name):
        return getattr(self._session, name)


class SqlUnitOfWork:
    outbox: Table
    inbox: Table

    def __init__(self, session_factory: async_sessionmaker):
        self._factory = session_factory
        self.session: AsyncSession

    async def __aenter__(self):
        self.session = WriteBehindSession(self._factory())
        self._pending: dict[Table, list[dict]] = {}
        self._committed: list[Callable[[], None]] = []
        await self.session.begin()
        self._bind_repositories(self.session)
        return self

    def _bind_repositories(self, session: AsyncSession) -> None:
        """Subclasses attach their repositories here."""

    async def __aexit__(self, *exc_info):
        if self.session.in_transaction():
            await self.session.rollback()
        await self.session.close()

    async def commit(self) -> None:
        await self._before_commit()
        pending, self._pending = self._pending, {}
        events = False
        for table, rows in pending.items():
            if table is self.outbox:  # encoded now: an event may take a value written at commit
                rows = [{**row, "body": encode(row["body"]).decode()} for row in rows]
                events = True
            await self.session.execute(insert(table), rows)
        await self.session.commit()
        if events:
            outbox_committed(self.outbox)
        committed, self._committed = self._committed, []
        for action in committed:
            action()

    def after_commit(self, action: Callable[[], None]) -> None:
        """`action` runs once this transaction has committed: a metric counts what a
        transaction did only if it did it, so a rollback or a rerun (rerun_on_conflict, a
        consumer's retried batch) counts nothing twice."""
        self._committed.append(action)

    async def _before_commit(self) -> None:
        """Subclasses write what they gathered for the commit here (before the outbox
        rows are encoded)."""

    def fork(self):
        """Another unit of work of the same kind on the same database (its own session),
        for reads that run beside this one."""
        return type(self)(self._factory)

    async def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        """The event goes out once the transaction commits (outbox rows keep this order)."""
        self._pending.setdefault(self.outbox, []).append(dict(
            event_id=str(envelope.event_id),
            topic=topic,
            message_key=key,
            message_type=envelope.type,
            correlation_id=envelope.correlation_id,
            body=envelope,
            created_at=datetime.now(timezone.utc),
        ))

    async def outbox_event(self, event_id: str) -> tuple[bool, datetime | None]:
        """Whether the outbox still holds an event (published rows are pruned after their
        retention, infra.messaging_retention), and when the relay published it (None
        while it waits)."""
        row = (await self.session.execute(
            select(self.outbox.c.published_at).where(self.outbox.c.event_id == event_id))).first()
        return (row is not None, row[0] if row is not None else None)

    async def apply_once(self, messages: list, topic: str, handle: Callable[[Any], Awaitable[dict | None]]) -> None:
        """Within this unit of work: each message not applied before, in order, through
        `handle` (its result is the inbox mark's detail), the mark written with the effect.
        The inbox is read once for all of them."""
        applied = await self.applied_among([m.envelope.event_id for m in messages])
        for message in messages:
            envelope = message.envelope
            if str(envelope.event_id) in applied:
                continue
            detail = await handle(message)
            await self.mark_applied(envelope.event_id, envelope.type, topic, detail)
            applied.add(str(envelope.event_id))

    async def applied_among(self, message_ids: list[uuid.UUID]) -> set[str]:
        """Which of these messages were applied already (one query for a consumed batch)."""
        found = await self.session.execute(
            select(self.inbox.c.message_id).where(self.inbox.c.message_id.in_([str(i) for i in message_ids])))
        return set(found.scalars())

    async def mark_applied(
        self, message_id: uuid.UUID, message_type: str, topic: str, detail: dict | None = None
    ) -> None:
        self._pending.setdefault(self.inbox, []).append(dict(
            message_id=str(message_id), message_type=message_type, topic=topic,
            applied_at=datetime.now(timezone.utc), detail=detail,
        ))
