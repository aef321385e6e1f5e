"""Keeps the approvals-by-state gauge current."""

import asyncio

import structlog
from sqlalchemy import func, select

from ecm_service.adapters import tables
from infra.metrics import APPROVALS_BY_STATE

log = structlog.get_logger()
STATES = ("in_progress", "awaiting_counterparty_verification", "returned", "approved", "rejected", "withdrawn")


async def refresh_approval_metrics(session_factory, interval: float = 10.0) -> None:
    while True:
        try:
            async with session_factory() as session:
                rows = dict((await session.execute(
                    select(tables.approvals.c.status, func.count()).group_by(tables.approvals.c.status))).all())
            for state in {*STATES, *rows}:
                APPROVALS_BY_STATE.labels(state).set(rows.get(state, 0))
        except Exception as exc:  # the database may be away for a moment
            log.warning("approval_metrics_failed", error=str(exc))
        await asyncio.sleep(interval)


async def run_deadline_clock(uow_factory, interval: float) -> None:
    """Reminders and escalations, every `interval` seconds; and the withdrawals that met
    their approval's start after all (`approvals.deadline_clock_tick`)."""
    from ecm_service.service_layer.approvals import deadline_clock_tick

    while True:
        try:
            counts = await deadline_clock_tick(uow_factory)
            if any(counts.values()):
                log.info("deadline_clock", **counts)
        except Exception as exc:  # the database may be away for a moment
            log.warning("deadline_clock_failed", error=str(exc))
        await asyncio.sleep(interval)
