"""Keeps the approvals-by-state gauges current, and those of the withdrawals waiting for
their approval's start."""

import asyncio
from datetime import datetime, timezone

import structlog
from prometheus_client import Gauge
from sqlalchemy import func, select

from ecm_service.adapters import tables
from infra.metrics import APPROVALS_BY_STATE

log = structlog.get_logger()
# Label-less, so exported from the start (at 0): here, not in infra.metrics, which every
# process imports, so that only the ECM's processes export them.
WITHDRAWALS_BEFORE_START = Gauge(
    "ecm_withdrawals_before_start", "Withdrawals the ECM keeps because their approval's start has not reached it",
)
WITHDRAWAL_BEFORE_START_AGE = Gauge(
    "ecm_withdrawal_before_start_oldest_age_seconds",
    "How long the oldest kept withdrawal has waited for its approval's start (0 when none waits)",
)
STATES = ("in_progress", "awaiting_counterparty_verification", "returned", "approved", "rejected", "withdrawn")


async def refresh_approval_gauges(session_factory) -> None:
    async with session_factory() as session:
        rows = dict((await session.execute(
            select(tables.approvals.c.status, func.count()).group_by(tables.approvals.c.status))).all())
        w = tables.withdrawals_before_start
        waiting, oldest = (await session.execute(select(func.count(), func.min(w.c.received_at)))).one()
    for state in {*STATES, *rows}:
        APPROVALS_BY_STATE.labels(state).set(rows.get(state, 0))
    # A withdrawal waits seconds for its start when the two crossed partitions; one that
    # waits for an hour means a start held up or dead-lettered (alert WithdrawalWaitsForItsStart).
    WITHDRAWALS_BEFORE_START.set(waiting)
    WITHDRAWAL_BEFORE_START_AGE.set(max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds()) if oldest else 0)


async def refresh_approval_metrics(session_factory, interval: float = 10.0) -> None:
    while True:
        try:
            await refresh_approval_gauges(session_factory)
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
