"""Operator views and actions on a service's outbox, given its database URL."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import MetaData, Table, func, select, update

from infra.db import make_engine
from infra.messaging_tables import outbox_table

OUTBOX = outbox_table(MetaData())


async def unsent_backlog(connection, outbox: Table = OUTBOX) -> tuple[int, float]:
    """(unpublished rows, age in seconds of the oldest one) — for a connection or a session."""
    count, oldest = (await connection.execute(
        select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.published_at.is_(None)))).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=timezone.utc)
    return count, (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0


async def backlog(database_url: str) -> dict:
    """Unsent rows and the age of the oldest one, in seconds."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            unsent, age = await unsent_backlog(conn)
            total = await conn.scalar(select(func.count()).select_from(OUTBOX))
    finally:
        await engine.dispose()
    return {"unsent": unsent, "oldest_unsent_age_s": round(age, 1), "total": total}


async def mark_for_republish(database_url: str, since: datetime,
                             until: datetime | None = None) -> tuple[int, datetime | None]:
    """Already-sent rows created in the window go back to the relay, which publishes
    them again in their original order (e.g. after a broker lost data). Returns how many,
    and when the oldest row the outbox still holds was created (published rows are
    pruned after the service's OUTBOX_KEEP_DAYS, infra.messaging_retention)."""
    conditions = [OUTBOX.c.created_at >= since, OUTBOX.c.published_at.is_not(None)]
    if until is not None:
        conditions.append(OUTBOX.c.created_at < until)
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(update(OUTBOX).where(*conditions).values(published_at=None))
            oldest = await conn.scalar(select(func.min(OUTBOX.c.created_at)))
    finally:
        await engine.dispose()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=timezone.utc)
    return result.rowcount, oldest
