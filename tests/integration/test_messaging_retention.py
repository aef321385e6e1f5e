"""Outbox and inbox rows past their retention are deleted, on both backends: sent outbox
rows after OUTBOX_KEEP_DAYS (never an unsent one), inbox marks after INBOX_KEEP_DAYS; in
batches; by the service's own background job; without waiting on rows another
transaction holds (PostgreSQL)."""

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, select, text, update

from crm_service.adapters import tables
from crm_service.entrypoints.app import create_app
from crm_service.service_layer import handlers
from deploy.local_run import LOCAL_SESSION_TIMEOUT_MS
from infra.messaging_retention import Retention, prune, run_pruning
from tests.support.polling import async_wait_until

NOW = datetime.now(timezone.utc)
KEEP = Retention(outbox_keep=timedelta(days=7), inbox_keep=timedelta(days=45), batch_size=2)


def _outbox_row(name: str, created_days_ago: float, sent_days_ago: float | None) -> dict:
    return dict(event_id=str(uuid.uuid4()), topic="crm.events", message_key=name, message_type="test.row",
                correlation_id=name, body="{}", created_at=NOW - timedelta(days=created_days_ago),
                published_at=None if sent_days_ago is None else NOW - timedelta(days=sent_days_ago))


def _inbox_mark(name: str, applied_days_ago: float) -> dict:
    return dict(message_id=str(uuid.uuid4()), message_type=name, topic="crm.commands",
                applied_at=NOW - timedelta(days=applied_days_ago), detail=None)


async def _fill(crm) -> None:
    rows = [_outbox_row(f"old-sent-{i}", 20, 10 + i) for i in range(5)]  # 5 rows: batches of 2, 2, 1
    rows += [_outbox_row("recent-sent", 2, 1), _outbox_row("old-unsent", 30, None)]
    marks = [_inbox_mark(f"old-{i}", 46 + i) for i in range(3)] + [_inbox_mark("recent", 44)]
    async with crm.engine.begin() as conn:
        await conn.execute(insert(tables.outbox), rows)
        await conn.execute(insert(tables.inbox), marks)


async def _left(crm) -> tuple[list[str], list[str]]:
    outbox, inbox = tables.outbox.c, tables.inbox.c
    async with crm.engine.connect() as conn:
        sent = (await conn.execute(select(outbox.message_key).order_by(outbox.id))).scalars()
        marks = (await conn.execute(select(inbox.message_type).order_by(inbox.message_type))).scalars()
        return list(sent), list(marks)


def _pruned_so_far(table: str) -> float:
    return REGISTRY.get_sample_value("messaging_rows_pruned_total", {"table": table}) or 0.0


async def test_rows_past_retention_go_in_batches_and_unsent_rows_stay(crm):
    await _fill(crm)
    before = _pruned_so_far("outbox"), _pruned_so_far("inbox")
    assert await prune(crm.engine, tables.outbox, tables.inbox, KEEP, now=NOW) == {"outbox": 5, "inbox": 3}
    assert await _left(crm) == (["recent-sent", "old-unsent"], ["recent"])
    assert (_pruned_so_far("outbox") - before[0], _pruned_so_far("inbox") - before[1]) == (5, 3)
    assert await prune(crm.engine, tables.outbox, tables.inbox, KEEP, now=NOW) == {"outbox": 0, "inbox": 0}
    # kept forever: nothing is looked at
    forever = Retention(outbox_keep=None, inbox_keep=None)
    assert await prune(crm.engine, tables.outbox, tables.inbox, forever, now=NOW + timedelta(days=999)) == {}
    assert await _left(crm) == (["recent-sent", "old-unsent"], ["recent"])


@pytest.mark.parametrize("backend", ["postgresql"])  # row locks: the production database
async def test_pruning_skips_rows_another_transaction_holds_instead_of_waiting(crm):
    await _fill(crm)
    async with crm.engine.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(text("SELECT id FROM outbox WHERE message_key = 'old-sent-0' FOR UPDATE"))
        async with asyncio.timeout(10):  # waiting for the lock would hang here
            pruned = await prune(crm.engine, tables.outbox, tables.inbox, KEEP, now=NOW)
        assert pruned["outbox"] == 4
        await transaction.rollback()
    assert await prune(crm.engine, tables.outbox, tables.inbox, KEEP, now=NOW) == {"outbox": 1, "inbox": 0}
    assert (await _left(crm))[0] == ["recent-sent", "old-unsent"]


async def test_the_job_keeps_pruning_and_outlives_a_failed_round(crm, backend):
    await _fill(crm)
    keep = Retention(outbox_keep=timedelta(days=7), inbox_keep=timedelta(days=45))
    async with crm.engine.begin() as conn:  # the first rounds fail: the inbox is not there
        await conn.execute(text("ALTER TABLE inbox RENAME TO inbox_away"))
    job = asyncio.create_task(run_pruning(crm.engine, tables.outbox, tables.inbox, keep, every_seconds=0.1,
                                          first_after_seconds=0))
    try:
        await asyncio.sleep(0.5)
        assert not job.done()
        async with crm.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE inbox_away RENAME TO inbox"))

        async def pruned():
            return await _left(crm) == (["recent-sent", "old-unsent"], ["recent"])
        await async_wait_until(pruned, timeout=10, message="the job pruned once the inbox was back")
        async with crm.engine.begin() as conn:  # a later round takes what has aged since
            await conn.execute(insert(tables.outbox), [_outbox_row("aged-since", 9, 8)])
        await async_wait_until(pruned, timeout=10, message="the next round pruned the new row")
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job


async def test_the_service_runs_the_job_with_its_settings(crm, databases, broker, backend, tmp_path):
    """The CRM's app starts the job with the relay and the consumer (its lifespan)."""
    await _fill(crm)
    # Its own consumer group, with make run's session: stopped during its join, a consumer
    # cannot leave its group, and the next test's would wait out its session first.
    settings = crm.settings.model_copy(update={"outbox_keep_days": 7, "inbox_keep_days": 45,
                                                "messaging_prune_seconds": 0.2,
                                                "consumer_group": f"crm-pruning-{uuid.uuid4().hex[:8]}",
                                                "session_timeout_ms": LOCAL_SESSION_TIMEOUT_MS})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async def pruned():
            return await _left(crm) == (["recent-sent", "old-unsent"], ["recent"])
        await async_wait_until(pruned, timeout=30, message="the service's job pruned")


async def test_a_pruned_request_event_is_explained_in_the_trace(crm):
    org = await handlers.create_organization(crm.uow(), user_id="u", name="Трасса")
    deal = await handlers.create_deal(crm.uow(), user_id="u", organization_id=org.id, title="Deal", funnel=crm.funnel)
    doc = await handlers.attach_document(crm.uow(), user_id="u", deal_id=deal.id, filename="c.pdf",
                                         content_type="application/pdf", doc_type="contract", sha256="a" * 64, size=3)
    request = await handlers.request_approval(crm.uow(), user_id="u", deal_id=deal.id, document_id=doc.id,
                                              correlation_id="trace")

    async def published_hop():
        trace = await handlers.trace_approval_request(crm.uow(), request.id)
        return next(h for h in trace["hops"] if h["hop"] == "crm.event_published")

    waiting = await published_hop()
    assert waiting["at"] is None and "note" not in waiting  # not sent yet: no note
    sent_at = NOW - timedelta(days=8)
    async with crm.engine.begin() as conn:
        await conn.execute(update(tables.outbox).values(published_at=sent_at))
    assert (await published_hop())["at"] == sent_at
    await prune(crm.engine, tables.outbox, tables.inbox, KEEP, now=NOW)
    pruned = await published_hop()
    assert pruned["at"] is None and "CRM_OUTBOX_KEEP_DAYS" in pruned["note"]
    assert pruned["event_id"] == request.request_event_id
