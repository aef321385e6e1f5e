"""Outbox and inbox rows are deleted once nothing can need them any more.

- A published outbox row is kept `outbox_keep` (for `bridgectl outbox replay`, which
  republishes rows created in a window, e.g. after a broker lost data). Unpublished rows
  are never deleted, however old.
- An inbox mark (the id of a message already applied) is kept `inbox_keep`: a message
  that comes back later than that (a dead letter replayed, an outbox replay, a consumer
  group reset to the topic's start) would be applied a second time. So the inbox must
  outlive the dead-letter topics' retention (30 days in deploy/kafka/create-topics.sh),
  the data topics' (7 days) and `outbox_keep`; `MessagingSettings` refuses an inbox kept
  shorter than the outbox.

Rows go in batches, each its own short transaction, oldest first, so the API, the relay
and the consumers keep working while a backlog of months is pruned (PostgreSQL: rows
another process holds are skipped, not waited for, and taken next time).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import structlog
from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.metrics import ROWS_PRUNED

log = structlog.get_logger()


@dataclass(frozen=True)
class Retention:
    outbox_keep: timedelta | None  # None: kept forever
    inbox_keep: timedelta | None
    batch_size: int = 5000

    @classmethod
    def from_settings(cls, settings) -> Retention:
        days = lambda value: timedelta(days=value) if value else None  # noqa: E731
        return cls(days(settings.outbox_keep_days), days(settings.inbox_keep_days))


async def prune(engine: AsyncEngine, outbox: Table, inbox: Table, retention: Retention,
                now: datetime | None = None) -> dict[str, int]:
    """Deletes what is past retention; rows deleted per table."""
    now = now or datetime.now(timezone.utc)
    pruned = {}
    if retention.outbox_keep is not None:
        published_before = outbox.c.published_at < now - retention.outbox_keep  # NULL (unsent) never is
        pruned["outbox"] = await _delete_in_batches(
            engine, outbox, outbox.c.id, published_before, outbox.c.published_at, retention.batch_size)
    if retention.inbox_keep is not None:
        pruned["inbox"] = await _delete_in_batches(
            engine, inbox, inbox.c.message_id, inbox.c.applied_at < now - retention.inbox_keep,
            inbox.c.applied_at, retention.batch_size)
    return pruned


async def _delete_in_batches(engine: AsyncEngine, table: Table, key, condition, oldest_first, batch_size: int) -> int:
    chosen = (select(key).where(condition).order_by(oldest_first).limit(batch_size)
              .with_for_update(skip_locked=True))  # SQLite: no row locks, the clause is left out
    statement = delete(table).where(key.in_(chosen.scalar_subquery()))
    total = 0
    while True:
        async with engine.begin() as connection:
            deleted = (await connection.execute(statement)).rowcount
        total += deleted
        ROWS_PRUNED.labels(table.name).inc(deleted)
        if deleted < batch_size:
            return total
        await asyncio.sleep(0)  # the API and the relay get their turn between batches


async def run_pruning(engine: AsyncEngine, outbox: Table, inbox: Table, retention: Retention,
                      every_seconds: float, first_after_seconds: float = 60.0) -> None:
    """The background job: prunes every `every_seconds` (first a minute after start, so a
    starting service is not slowed by a long backlog). A failure (database away) is
    logged and tried again at the next round."""
    if retention.outbox_keep is None and retention.inbox_keep is None:
        return
    await asyncio.sleep(min(first_after_seconds, every_seconds))
    while True:
        try:
            pruned = await prune(engine, outbox, inbox, retention)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("messaging_prune_failed", error=str(exc), error_class=type(exc).__name__)
        else:
            if any(pruned.values()):
                log.info("messaging_pruned", **{f"{name}_rows": count for name, count in pruned.items()})
        await asyncio.sleep(every_seconds)
