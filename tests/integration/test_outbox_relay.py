"""The CRM's state change and its event commit together; the relay publishes them to
the real broker once, in order, with the envelope's ids in the headers."""

import asyncio
import json
from datetime import datetime, timezone

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from crm_service.adapters import tables
from crm_service.service_layer import handlers
from infra.kafka import ensure_topics
from infra.outbox_relay import OutboxRelay
from schemas import crm_commands
from schemas.topics import CRM_EVENTS, provisioning
from tests.support.kafka import read_all


async def _approval_requests(crm, count):
    org = await handlers.create_organization(crm.uow(), user_id="u", name="Вектор")
    deal = await handlers.create_deal(crm.uow(), user_id="u", organization_id=org.id, title="Deal", funnel=crm.funnel)
    requests = []
    for i in range(count):
        doc = await handlers.attach_document(crm.uow(), user_id="u", deal_id=deal.id, filename=f"c{i}.pdf",
                                             content_type="application/pdf", doc_type="contract",
                                             sha256=f"{i:x}" * 64, size=3)
        requests.append(await handlers.request_approval(crm.uow(), user_id="u", deal_id=deal.id,
                                                        document_id=doc.id, correlation_id=f"corr-{i}"))
    return org, requests


async def test_asking_again_for_an_open_approval_answers_with_the_same_request(crm):
    org, (first,) = await _approval_requests(crm, 1)
    again = await handlers.request_approval(crm.uow(), user_id="u", deal_id=first.deal_id,
                                            document_id=first.document_id, correlation_id="resent")
    assert again.id == first.id
    async with crm.session_factory() as session:
        events = await session.scalar(select(func.count()).select_from(tables.outbox))
    assert events == 1
    await _set_status(crm, first.id, "rejected")  # once rejected, a new request may start
    fresh = await handlers.request_approval(crm.uow(), user_id="u", deal_id=first.deal_id,
                                            document_id=first.document_id, correlation_id="new round")
    assert fresh.id != first.id


async def _set_status(crm, request_id: str, status: str) -> None:
    async with crm.uow() as uow:
        request = await uow.approval_requests.get(request_id)
        request.status = status
        await uow.approval_requests.save(request)
        await uow.commit()


async def _outbox(crm) -> list[tuple[str, dict]]:
    async with crm.session_factory() as session:
        rows = (await session.execute(select(tables.outbox.c.message_type, tables.outbox.c.body)
                                      .order_by(tables.outbox.c.id))).all()
    return [(type_, json.loads(body)["payload"]) for type_, body in rows]


async def test_a_new_version_of_a_returned_document_goes_to_its_approval_instead_of_a_second_request(crm):
    org, (first,) = await _approval_requests(crm, 1)
    await _set_status(crm, first.id, "returned")
    with pytest.raises(handlers.ReturnedForChanges, match="returned .* for changes: send a new version"):
        await handlers.request_approval(crm.uow(), user_id="u", deal_id=first.deal_id,
                                        document_id=first.document_id, correlation_id="again")

    new = dict(deal_id=first.deal_id, document_id=first.document_id, filename="c0-fixed.pdf",
               content_type="application/pdf", sha256="e" * 64, size=5)
    doc, sent_to, created = await handlers.add_document_version(crm.uow(), user_id="u2", correlation_id="fix",
                                                                **new)
    assert (created, sent_to.id, doc.version_no, doc.filename, doc.uploaded_by) == (
        True, first.id, 2, "c0-fixed.pdf", "u2")
    again = await handlers.add_document_version(crm.uow(), user_id="u2", correlation_id="resent", **new)
    assert again[1:] == (None, False)  # the same file again: nothing new, nothing sent
    events = await _outbox(crm)
    assert [t for t, _ in events] == ["crm.approval_requested", "crm.document_version_added"]
    assert events[1][1]["approval_request_id"] == first.id and events[1][1]["version_no"] == 2
    assert events[1][1]["document"] == {"id": doc.id, "filename": "c0-fixed.pdf", "content_type": "application/pdf",
                                        "doc_type": "contract", "sha256": "e" * 64, "size": 5}
    async with crm.uow() as uow:
        assert [(v["version_no"], v["sha256"]) for v in await uow.documents.versions(doc.id)] == [(1, "0" * 64)]

    # approved: a new version is only kept; a new request then sends it
    await _set_status(crm, first.id, "approved")
    doc, sent_to, created = await handlers.add_document_version(
        crm.uow(), user_id="u", correlation_id="v3", **{**new, "sha256": "f" * 64})
    assert (created, sent_to, doc.version_no) == (True, None, 3)
    assert len(await _outbox(crm)) == 2
    fresh = await handlers.request_approval(crm.uow(), user_id="u", deal_id=first.deal_id,
                                            document_id=first.document_id, correlation_id="v3 sent")
    assert fresh.id != first.id
    assert (await _outbox(crm))[-1][1]["document"]["sha256"] == "f" * 64


async def _status_update(crm, request_id: str, status: str, revision: int, command: str, **extra) -> bool:
    cmd = crm_commands.UpdateApprovalStatusV3(approval_request_id=request_id, status=status, revision=revision,
                                              stage="legal" if status == "in_progress" else None,
                                              registry_approval_id="ecm-approval", **extra,
                                              changed_at=datetime.now(timezone.utc))  # as the bridge sends it
    async with crm.uow() as uow:
        changed = await handlers.update_approval_status(uow, cmd, command)
        await uow.commit()
    return changed


async def test_a_withdrawn_request_is_closed_at_once_and_its_event_names_the_reason(crm):
    """The rep takes a request back: closed in the CRM at once, with its event (keyed by
    the organization, as the request's own) in the same transaction; the document may
    be sent again as a new request. News of a stage decided before the withdrawal reached
    the ECM does not reopen it; the ECM's `withdrawn` closes it there too; an approval
    that finished before the withdrawal arrived stands, in both systems."""
    org, (first, second) = await _approval_requests(crm, 2)
    assert await _status_update(crm, first.id, "in_progress", 1, "c1")
    with pytest.raises(handlers.InvalidRequest, match="say why"):
        await handlers.withdraw_approval_request(crm.uow(), user_id="u", request_id=first.id, reason="  ",
                                                 correlation_id="w0")
    withdrawn = await handlers.withdraw_approval_request(crm.uow(), user_id="u", request_id=first.id,
                                                         reason="The client chose another supplier",
                                                         correlation_id="w1")
    assert (withdrawn.status, withdrawn.stage, withdrawn.reason) == ("withdrawn", None,
                                                                     "The client chose another supplier")
    with pytest.raises(handlers.Conflict, match="withdrawn already"):
        await handlers.withdraw_approval_request(crm.uow(), user_id="u", request_id=first.id, reason="again",
                                                 correlation_id="w2")
    with pytest.raises(handlers.NotFound):
        await handlers.withdraw_approval_request(crm.uow(), user_id="u", request_id="missing", reason="x",
                                                 correlation_id="w3")
    events = await _outbox(crm)
    assert [t for t, _ in events][-1] == "crm.approval_withdrawn"
    assert {k: v for k, v in events[-1][1].items() if k != "withdrawn_at"} == {
        "approval_request_id": first.id, "organization_id": org.id, "withdrawn_by": "u",
        "reason": "The client chose another supplier"}
    async with crm.session_factory() as session:
        key = (await session.execute(select(tables.outbox.c.message_key)
                                     .order_by(tables.outbox.c.id.desc()))).scalar()
    assert key == org.id

    assert not await _status_update(crm, first.id, "in_progress", 2, "c2")  # decided before the withdrawal
    assert await _status_update(crm, first.id, "withdrawn", 3, "c3", notify_user_id="u", withdrawn_by="u")
    trace = await handlers.trace_approval_request(crm.uow(), first.id)
    assert [(h["hop"], h.get("status")) for h in trace["hops"][2:]] == [
        ("ecm.status_changed", "in_progress"), ("crm.status_received", "in_progress"), ("crm.withdrawn", "withdrawn"),
        ("ecm.status_changed", "withdrawn"), ("crm.status_received", "withdrawn")]
    again = await handlers.request_approval(crm.uow(), user_id="u", deal_id=first.deal_id,
                                            document_id=first.document_id, correlation_id="sent again")
    assert again.id != first.id and again.status == "requested"

    await handlers.withdraw_approval_request(crm.uow(), user_id="u", request_id=second.id, reason="wrong file",
                                             correlation_id="w4")
    assert await _status_update(crm, second.id, "approved", 4, "c4", notify_user_id="u")  # finished before
    async with crm.uow() as uow:
        assert (await uow.approval_requests.get(second.id)).status == "approved"
        # the rep who withdrew the first is not told it closed; the second's outcome is news
        (note,) = await uow.notifications.for_user("u")
        document = await uow.documents.get(second.document_id)
        deal = await uow.deals.get(second.deal_id)
        assert (note["text"], note["document_name"], note["deal_id"], note["deal_title"]) == (
            "Approval approved", document.filename, deal.id, deal.title)  # what it is about


async def test_versions_added_at_the_same_moment_each_get_their_own_number(crm):
    """Five new files for one document at once (two reps, or a double click with another
    file): each becomes a version of its own, the last one the document's current file,
    none a 500. On SQLite the document's FOR UPDATE locked nothing then (ADR 0018) and
    four of the five broke the versions' key."""
    _, (first,) = await _approval_requests(crm, 1)
    new = dict(deal_id=first.deal_id, document_id=first.document_id, filename="c0-fixed.pdf",
               content_type="application/pdf", size=5)
    added = await asyncio.gather(*(handlers.add_document_version(
        crm.uow(), user_id="u2", correlation_id=f"fix {c}", sha256=c * 64, **new) for c in "abcde"))
    assert sorted(doc.version_no for doc, _, _ in added) == [2, 3, 4, 5, 6]
    async with crm.uow() as uow:
        kept = [(v["version_no"], v["sha256"]) for v in await uow.documents.versions(first.document_id)]
        current = await uow.documents.get(first.document_id)
    assert [n for n, _ in kept] == [1, 2, 3, 4, 5]
    assert {sha for _, sha in kept[1:]} | {current.sha256} == {c * 64 for c in "abcde"}


@pytest.mark.parametrize("backend", ["postgresql"])  # concurrent writers: the production database
async def test_concurrent_requests_for_one_document_start_one_approval(crm):
    """Eight calls at once for the same document (a double click, a client retrying
    while the first call is still running): one request, one event, the same answer.
    Ten rounds, each after the last request was rejected."""
    org, (latest,) = await _approval_requests(crm, 1)

    async def connected():
        async with crm.session_factory() as session:
            await session.execute(select(1))
            await asyncio.sleep(0.2)
    await asyncio.gather(*[connected() for _ in range(8)])  # eight connections ready: the calls overlap
    rounds = 10
    for n in range(rounds):
        await _set_status(crm, latest.id, "rejected")
        answers = await asyncio.gather(*[
            handlers.request_approval(crm.uow(), user_id="u", deal_id=latest.deal_id,
                                      document_id=latest.document_id, correlation_id=f"round-{n}-click-{i}")
            for i in range(8)])
        assert len({a.id for a in answers}) == 1 and answers[0].id != latest.id
        latest = answers[0]
    async with crm.session_factory() as session:
        requests = await session.scalar(select(func.count()).select_from(tables.approval_requests))
        events = await session.scalar(select(func.count()).select_from(tables.outbox))
    assert (requests, events) == (1 + rounds, 1 + rounds)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_an_approval_request_costs_five_round_trips(crm):
    """BEGIN, the document locked with its deal and organization, the request inserted
    unless one is open, the outbox row, COMMIT (db_round_trips_total; under load each
    is a wait of tens of milliseconds, bench/RESULTS.md)."""
    org = await handlers.create_organization(crm.uow(), user_id="u", name="Вектор")
    deal = await handlers.create_deal(crm.uow(), user_id="u", organization_id=org.id, title="Deal", funnel=crm.funnel)
    doc = await handlers.attach_document(crm.uow(), user_id="u", deal_id=deal.id, filename="c.pdf",
                                         content_type="application/pdf", doc_type="contract", sha256="a" * 64, size=3)
    before = REGISTRY.get_sample_value("db_round_trips_total")
    await handlers.request_approval(crm.uow(), user_id="u", deal_id=deal.id, document_id=doc.id, correlation_id="c")
    assert REGISTRY.get_sample_value("db_round_trips_total") - before == 5


async def test_a_request_names_what_is_missing(crm):
    org, (first,) = await _approval_requests(crm, 1)
    other = await handlers.create_deal(crm.uow(), user_id="u", organization_id=org.id, title="Other", funnel=crm.funnel)
    for deal_id, document_id, message in [
            ("missing", first.document_id, "deal missing not found"),
            (other.id, first.document_id, f"document {first.document_id} not found on deal {other.id}"),
            (first.deal_id, "missing", f"document missing not found on deal {first.deal_id}")]:
        with pytest.raises(handlers.NotFound, match=message):
            await handlers.request_approval(crm.uow(), user_id="u", deal_id=deal_id, document_id=document_id,
                                            correlation_id="c")


async def test_relay_publishes_each_outbox_row_once_in_order(crm, broker):
    await ensure_topics(broker, provisioning(3))
    org, requests = await _approval_requests(crm, 3)
    relay = crm.relay()
    assert await relay.publish_batch() == 3
    assert await relay.publish_batch() == 0

    async with crm.session_factory() as session:
        unsent = await session.scalar(
            select(func.count()).select_from(tables.outbox).where(tables.outbox.c.published_at.is_(None)))
    assert unsent == 0

    mine = [r for r in await read_all(broker, CRM_EVENTS) if r.key == org.id.encode()]
    bodies = [json.loads(r.value) for r in mine]
    assert [b["payload"]["approval_request_id"] for b in bodies] == [r.id for r in requests]
    assert len({r.partition for r in mine}) == 1  # one organization, one partition
    headers = dict(mine[0].headers)
    assert headers["event_id"].decode() == bodies[0]["event_id"]
    assert headers["correlation_id"] == b"corr-0" and headers["type"] == b"crm.approval_requested"


async def test_a_failed_request_writes_no_event(crm):
    try:
        await handlers.request_approval(crm.uow(), user_id="u", deal_id="missing", document_id="x",
                                        correlation_id="c")
    except handlers.NotFound:
        pass
    async with crm.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(tables.outbox)) == 0


async def test_a_commit_with_events_wakes_the_relay_before_its_next_poll(crm, broker):
    """The relay polls only as a fallback (here every 60 s): a unit of work of the same
    process that commits outbox rows starts its next batch at once."""
    await ensure_topics(broker, provisioning(3))
    relay = OutboxRelay(crm.session_factory, tables.outbox, crm.producer, service="crm", poll_interval=60)
    running = asyncio.create_task(relay.run_forever())
    try:
        await asyncio.sleep(1)  # its first round found nothing; it now waits
        org, requests = await _approval_requests(crm, 2)

        async def unsent():
            async with crm.session_factory() as session:
                return await session.scalar(select(func.count()).select_from(tables.outbox)
                                            .where(tables.outbox.c.published_at.is_(None)))
        for _ in range(100):
            if await unsent() == 0:
                break
            await asyncio.sleep(0.1)
        assert await unsent() == 0, "the relay was not woken by the commit"
        mine = [r for r in await read_all(broker, CRM_EVENTS) if r.key == org.id.encode()]
        assert [json.loads(r.value)["payload"]["approval_request_id"] for r in mine] == [r.id for r in requests]
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
