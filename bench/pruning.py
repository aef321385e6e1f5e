"""Outbox and inbox pruning (infra.messaging_retention) on PostgreSQL: how fast a backlog
goes (the first run after months without pruning), and what it does meanwhile to a live
consumer's writes (an inbox mark and an outbox row committed every 10 ms, as the services
write them).

    PYTHONPATH=. .venv/bin/python bench/pruning.py --rows 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.table import print_table, summarise  # noqa: E402
from crm_service.adapters import tables  # noqa: E402
from infra.db import upgrade_to_head  # noqa: E402
from infra.messaging_retention import Retention, prune  # noqa: E402
from tests.support.databases import MIGRATIONS, create_pg_database, drop_pg_database  # noqa: E402

BODY = json.dumps({"payload": {"organization": {"name": "x" * 200}, "document": {"sha256": "0" * 64}}})


async def fill(dsn: str, rows: int, kept: int) -> None:
    """`rows` sent outbox rows and inbox marks past retention, `kept` of each still within it."""
    now = datetime.now(timezone.utc)
    old, recent = now - timedelta(days=60), now - timedelta(days=1)
    conn = await asyncpg.connect(dsn)
    try:
        outbox = [(str(uuid.uuid4()), "crm.events", f"org-{i % 5000}", "crm.approval_requested", f"c-{i}", BODY,
                   at, at) for i, at in enumerate([old] * rows + [recent] * kept)]
        await conn.copy_records_to_table("outbox", records=outbox, columns=[
            "event_id", "topic", "message_key", "message_type", "correlation_id", "body", "created_at", "published_at"])
        inbox = [(str(uuid.uuid4()), "crm.update_approval_status", "crm.commands", at, '{"applied": true}')
                 for at in [old] * rows + [recent] * kept]
        await conn.copy_records_to_table("inbox", records=inbox, columns=[
            "message_id", "message_type", "topic", "applied_at", "detail"])
        await conn.execute("ANALYZE outbox; ANALYZE inbox")
    finally:
        await conn.close()


async def live_writes(dsn: str, stop: asyncio.Event) -> list[float]:
    """Seconds each live write took (an inbox mark and an outbox row in one transaction)."""
    conn = await asyncpg.connect(dsn)
    took = []
    try:
        while not stop.is_set():
            began = time.perf_counter()
            async with conn.transaction():
                now = datetime.now(timezone.utc)
                await conn.execute("INSERT INTO inbox (message_id, message_type, topic, applied_at) "
                                   "VALUES ($1, 'live', 'crm.commands', $2)", str(uuid.uuid4()), now)
                await conn.execute("INSERT INTO outbox (event_id, topic, message_key, message_type, correlation_id, "
                                   "body, created_at) VALUES ($1, 'crm.events', 'k', 'live', 'c', $2, $3)",
                                   str(uuid.uuid4()), BODY, now)
            took.append(time.perf_counter() - began)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return took


async def measure(url: str, dsn: str, rows: int, kept: int, batch: int) -> dict:
    await fill(dsn, rows, kept)
    engine = create_async_engine(url)
    try:
        stop = asyncio.Event()
        quiet = asyncio.create_task(live_writes(dsn, stop))
        await asyncio.sleep(3)
        stop.set()
        before = await quiet
        stop = asyncio.Event()
        busy = asyncio.create_task(live_writes(dsn, stop))
        started = time.perf_counter()
        pruned = await prune(engine, tables.outbox, tables.inbox,
                             Retention(outbox_keep=timedelta(days=7), inbox_keep=timedelta(days=45), batch_size=batch))
        seconds = time.perf_counter() - started
        stop.set()
        during = await busy
    finally:
        await engine.dispose()
    return {"pruned": pruned, "seconds": seconds, "before": sorted(before), "during": sorted(during)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="outbox rows and inbox marks past retention")
    parser.add_argument("--kept", type=int, default=20_000, help="of each, still within retention")
    parser.add_argument("--batch", type=int, default=Retention(None, None).batch_size)
    args = parser.parse_args()
    name, url = create_pg_database("bench_pruning")
    try:
        upgrade_to_head(MIGRATIONS["crm"], url)
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        result = asyncio.run(measure(url, dsn, args.rows, args.kept, args.batch))
    finally:
        drop_pg_database(name)

    def quantiles(took: list[float]) -> str:
        q = statistics.quantiles(took, n=100)
        return f"p50 {q[49] * 1000:.1f} / p99 {q[98] * 1000:.1f} / max {took[-1] * 1000:.1f} ms"

    deleted = sum(result["pruned"].values())
    print_table([
        ("cores", os.cpu_count(), ""),
        ("past retention (outbox rows + inbox marks)", f"{2 * args.rows:,}", f"and {2 * args.kept:,} kept"),
        ("deleted", f"{deleted:,}", ", ".join(f"{table} {count:,}" for table, count in result["pruned"].items())),
        ("pruning took", f"{result['seconds']:.1f} s", f"{deleted / result['seconds']:,.0f} rows/s, "
                                                       f"batches of {args.batch:,}"),
        ("live write, before", f"{len(result['before'])}", quantiles(result["before"])),
        ("live write, while pruning", f"{len(result['during'])}", quantiles(result["during"])),
    ])
    summarise([
        (f"pruning: {2 * args.rows:,} outbox rows and inbox marks past retention", f"{result['seconds']:.1f} s",
         f"{deleted / result['seconds']:,.0f} rows/s", None),
        ("pruning: a live write meanwhile, p99", f"{statistics.quantiles(result['during'], n=100)[98] * 1000:.1f} ms",
         f"before: {statistics.quantiles(result['before'], n=100)[98] * 1000:.1f} ms", None),
    ])
    if deleted != 2 * args.rows:
        sys.exit(f"expected {2 * args.rows} rows deleted, got {deleted}")


if __name__ == "__main__":
    main()
