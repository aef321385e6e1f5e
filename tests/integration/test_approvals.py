"""Approvals on both backends through the ECM's service layer: route versions, deputies,
re-opening on a new version, the verified-counterparty policy, the deadline clock,
delay reasons and rights by participation, with the events they publish."""

import asyncio
import io
import json
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.adapters.history import HistoryLog
from ecm_service.domain.approval import Actor, ApprovalClosed, DecisionNotAllowed
from ecm_service.service_layer import approvals as cases
from ecm_service.service_layer import steward
from ecm_service.service_layer.access import can_read_document
from ecm_service.service_layer.commands import apply_command, apply_commands
from ecm_service.service_layer.documents import store_version
from ecm_service.service_layer.metrics import refresh_approval_gauges
from infra.users import User, upsert_user
from schemas import ecm_commands
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import Message, encode, parse_message
from tests.support.identifiers import valid_ids

VALID = {"inn": "7707083893", "kpp": "773601001", "ogrn": "1027700132195"}


async def person(ecm, name: str, role: str) -> Actor:
    user_id = await upsert_user(ecm.session_factory, tables.users, name=name, role=role, token=uuid.uuid4().hex)
    return Actor(id=user_id, name=name, role=role)


async def store(ecm, content: bytes, *, document_id=None, doc_type="contract"):
    sha, size = ecm.content_store.put(io.BytesIO(content), max_bytes=10**6)
    doc, version, _ = await store_version(
        ecm.uow(), user_id="integration", doc_type=doc_type, title="Договор поставки", filename="c.txt",
        content_type="text/plain", sha256=sha, size=size, external_ref=None, document_id=document_id,
        retention=ecm.retention)
    return doc, version


async def command(ecm, type_, payload):
    envelope = new_envelope(type=type_, schema_version=1, source="it", correlation_id="c", payload=payload)
    await apply_command(ecm.uow(), parse_message(encode(envelope)), "it", ecm.routes, ecm.document_types)


async def start(ecm, *, doc_type="contract", ids=None) -> tuple[str, dict]:
    doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode(), doc_type=doc_type)
    org = ExternalRef(system="crm", id=str(uuid.uuid4()))
    await command(ecm, ecm_commands.SYNC_COUNTERPARTY,
                  ecm_commands.SyncCounterpartyV1(external_ref=org, name="ООО «Вектор»", **(ids or {})))
    request = ExternalRef(system="crm", id=str(uuid.uuid4()))
    await command(ecm, ecm_commands.START_APPROVAL, ecm_commands.StartApprovalV1(
        external_ref=request, counterparty_ref=org, initiator_ref=ExternalRef(system="crm", id="u"),
        document_id=doc["id"], document_version_id=version["id"], sha256=version["sha256"], doc_type=doc_type,
        title="Договор поставки"))
    async with ecm.uow() as uow:
        return await uow.external_refs.find(cases.APPROVAL, request), doc


async def events(ecm, approval_id: str) -> list[dict]:
    o = tables.outbox
    async with ecm.session_factory() as session:
        rows = await session.execute(select(o.c.body).where(o.c.message_type == "ecm.approval_status_changed")
                                     .order_by(o.c.id))
    payloads = [json.loads(body)["payload"] for body in rows.scalars()]
    return [p for p in payloads if p["approval_id"] == approval_id]


async def decide(ecm, approval_id, actor, decision="approve", comment=None):
    return await cases.decide(ecm.uow(), approval_id=approval_id, actor=actor, decision=decision, comment=comment,
                              reason=None)


@pytest.fixture
async def people(ecm):
    return {role: await person(ecm, f"{role}-{uuid.uuid4().hex[:6]}", role)
            for role in ("legal", "finance", "director", "steward")}


async def test_route_versions_in_flight_approvals_keep_theirs_and_new_ones_take_the_latest(ecm, people):
    assert await cases.sync_routes_from_file(ecm.uow(), ecm.routes, at=datetime.now(timezone.utc)) \
        == ["contract v1", "default v1"]
    assert await cases.sync_routes_from_file(ecm.uow(), ecm.routes, at=datetime.now(timezone.utc)) == []
    old, _ = await start(ecm)
    admin = User(id="admin-id", name="ecm-admin", role="admin")
    route = await cases.change_route(ecm.uow(), doc_type="contract", user=admin, spec={"stages": [
        {"name": "legal board", "assignees": [{"role": "legal"}, {"role": "legal"}, {"role": "legal"}], "quorum": 2},
        {"name": "director", "role": "director"}]})
    assert route.version == 2
    new, _ = await start(ecm)
    async with ecm.uow() as uow:
        before, after = await uow.approvals.get(old), await uow.approvals.get(new)
        preview = await uow.routes.in_flight_by_version()
    assert (before.route_version, [s.name for s in before.steps]) == (1, ["legal", "finance", "director"])
    assert (after.route_version, [s.name for s in after.steps]) == (2, ["legal board", "director"])
    assert {(r["doc_type"], r["version"], r["count"]) for r in preview} == {("contract", 1, 1), ("contract", 2, 1)}
    # The quorum stage passes on two of three legal approvals.
    second_legal = await person(ecm, "legal-second", "legal")
    await decide(ecm, new, people["legal"])
    approval = await decide(ecm, new, second_legal)
    assert approval.current_step.name == "director"
    # The file unchanged at the next start does not undo the admin's version.
    assert await cases.sync_routes_from_file(ecm.uow(), ecm.routes, at=datetime.now(timezone.utc)) == []


async def test_two_route_changes_at_the_same_moment_each_get_their_own_version(ecm, people):
    """Two admins change one document type's route at once: both changes are kept, as the
    next two versions (the later insert broke the version's key, and its change ran again
    on the version the other had committed); neither admin gets a 500."""
    admin = User(id="admin-id", name="ecm-admin", role="admin")
    specs = [{"stages": [{"name": f"legal {i}", "role": "legal"}]} for i in range(3)]
    routes = await asyncio.gather(*(cases.change_route(ecm.uow(), doc_type="contract", user=admin, spec=spec)
                                    for spec in specs))
    assert sorted(route.version for route in routes) == [1, 2, 3]
    async with ecm.uow() as uow:
        stored = await uow.routes.versions("contract")
    assert sorted(v["spec"]["stages"][0]["name"] for v in stored) == ["legal 0", "legal 1", "legal 2"]


async def test_replicas_starting_at_once_seed_the_routes_from_the_file_once(ecm):
    syncs = await asyncio.gather(*(cases.sync_routes_from_file(ecm.uow(), ecm.routes, at=datetime.now(timezone.utc))
                                   for _ in range(3)))
    assert sorted(syncs) == [[], [], ["contract v1", "default v1"]]
    async with ecm.uow() as uow:
        assert [(v["doc_type"], v["version"]) for v in await uow.routes.versions()] == [
            ("contract", 1), ("default", 1)]


async def test_a_deputy_decides_and_the_history_and_event_name_both(ecm, people):
    approval_id, _ = await start(ecm)
    deputy = await person(ecm, "deputy-dmitry", "finance")
    with pytest.raises(DecisionNotAllowed):
        await decide(ecm, approval_id, deputy)
    async with ecm.uow() as uow:
        await uow.deputies.add(user_id=people["legal"].id, deputy_id=deputy.id, starts_on=date.today(),
                               ends_on=date.today() + timedelta(days=7), at=datetime.now(timezone.utc))
        await uow.commit()
    approval = await decide(ecm, approval_id, deputy)
    assert approval.current_step.name == "finance"
    async with ecm.uow() as uow:
        (decided,) = [h for h in await uow.history.of("approval", approval_id) if h["action"] == "decided"]
    assert (decided["data"]["by"], decided["data"]["on_behalf_of"]) == ("deputy-dmitry", people["legal"].name)
    published = await events(ecm, approval_id)
    assert [(e["event"], e["status"], e["stage"]) for e in published] == [
        ("started", "in_progress", "legal"), ("stage_decided", "in_progress", "finance")]
    assert published[0]["due_at"] and published[0]["overdue"] is False


async def test_a_deputy_stands_in_on_the_companys_calendar_day_not_utcs(ecm, people):
    # A zone whose date differs from UTC's at this very moment (UTC-12 in UTC's morning,
    # UTC+14 in its afternoon): a deputy named for that one business day decides; a
    # deputy named for UTC's day does not. Before BUSINESS_TIMEZONE, UTC's date ruled here
    # and the server's own zone in the inbox.
    from infra import business_day

    approval_id, _ = await start(ecm)
    utc_today = datetime.now(timezone.utc).date()
    zone = "Etc/GMT+12" if datetime.now(timezone.utc).hour < 12 else "Etc/GMT-14"
    business_day.use_zone(zone)
    try:
        company_today = business_day.today()
        assert company_today != utc_today
        deputy = await person(ecm, "deputy-one-day", "finance")
        utc_deputy = await person(ecm, "deputy-utc-day", "finance")
        async with ecm.uow() as uow:
            for who, day in ((deputy, company_today), (utc_deputy, utc_today)):
                await uow.deputies.add(user_id=people["legal"].id, deputy_id=who.id, starts_on=day, ends_on=day,
                                       at=datetime.now(timezone.utc))
            await uow.commit()
        with pytest.raises(DecisionNotAllowed):
            await decide(ecm, approval_id, utc_deputy)
        approval = await decide(ecm, approval_id, deputy)
        assert approval.current_step.name == "finance"
    finally:
        business_day.use_zone("UTC")


async def test_return_for_changes_then_a_new_version_reopens_and_decisions_carry_the_new_hash(ecm, people):
    approval_id, doc = await start(ecm)
    await decide(ecm, approval_id, people["legal"])
    await decide(ecm, approval_id, people["finance"], "return", comment="price in 4.2 is wrong")
    _, version = await store(ecm, b"contract, corrected price", document_id=doc["id"])
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(approval_id)
    assert (approval.status, approval.current_step.name, approval.round) == ("in_progress", "legal", 2)
    assert approval.document_sha256 == version["sha256"] != doc["id"]
    place = next(p for p in (await decide(ecm, approval_id, people["legal"])).assignments
                 if p.round == 2 and p.decided_by)
    assert place.sha256 == version["sha256"]
    assert [e["event"] for e in await events(ecm, approval_id)] == [
        "started", "stage_decided", "completed", "reopened", "stage_decided"]
    assert (await events(ecm, approval_id))[2]["status"] == "returned"


async def test_a_crm_documents_versions_arrive_under_its_ref_and_an_approval_starts_on_the_newest(ecm, people):
    """The bridge stores a CRM document's files under its external ref. A transfer replayed
    after a newer version arrived stores nothing; an approval whose start travelled behind
    a newer version starts on that one."""
    ref = ExternalRef(system="crm", id=str(uuid.uuid4()))

    async def transfer(content: bytes):
        sha, size = ecm.content_store.put(io.BytesIO(content), max_bytes=10**6)
        return await store_version(ecm.uow(), user_id="integration", doc_type="contract", title="Договор",
                                   filename="c.txt", content_type="text/plain", sha256=sha, size=size,
                                   external_ref=ref, retention=ecm.retention)

    doc, first, _ = await transfer(b"contract v1")
    _, second, created = await transfer(b"contract v2, corrected")
    assert (created, second["version_no"]) == (True, 2)
    _, replayed, created = await transfer(b"contract v1")
    assert (created, replayed["id"]) == (False, first["id"])
    async with ecm.uow() as uow:
        assert [v["version_no"] for v in await uow.documents.versions(doc["id"])] == [1, 2]

    org = ExternalRef(system="crm", id=str(uuid.uuid4()))
    await command(ecm, ecm_commands.SYNC_COUNTERPARTY, ecm_commands.SyncCounterpartyV1(external_ref=org, name="Вектор"))
    request = ExternalRef(system="crm", id=str(uuid.uuid4()))
    await command(ecm, ecm_commands.START_APPROVAL, ecm_commands.StartApprovalV1(
        external_ref=request, counterparty_ref=org, initiator_ref=ExternalRef(system="crm", id="u"),
        document_id=doc["id"], document_version_id=first["id"], sha256=first["sha256"], doc_type="contract",
        title="Договор"))
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(await uow.external_refs.find(cases.APPROVAL, request))
        (started,) = [e for e in await uow.history.of(cases.APPROVAL, approval.id) if e["action"] == "started"]
    assert (approval.document_version_id, approval.document_sha256) == (second["id"], second["sha256"])
    assert started["data"]["requested_version_id"] == first["id"]


async def test_versions_uploaded_at_the_same_moment_each_get_their_own_number(ecm, people):
    """Several new versions of one document at once (two approvers' uploads, or the API and
    a transfer): each is stored under the next number, none is a 500. Found by the API fuzz
    runs going side by side: on SQLite the document's FOR UPDATE locked nothing then (ADR
    0018), and two transactions read the same last number; a first transfer of one ref
    twice at once, on either backend, made two documents for one ref (the ref's unique key
    refused the second: no row exists yet to lock)."""
    ref = ExternalRef(system="crm", id=str(uuid.uuid4()))

    async def store(content: bytes, **target):
        sha, size = ecm.content_store.put(io.BytesIO(content), max_bytes=10**6)
        return await store_version(ecm.uow(), user_id="integration", doc_type="contract", title="Договор",
                                   filename="c.txt", content_type="text/plain", sha256=sha, size=size,
                                   retention=ecm.retention, **target)

    firsts = await asyncio.gather(*(store(b"v1", external_ref=ref) for _ in range(3)))
    assert len({doc["id"] for doc, _, _ in firsts}) == 1 and [c for _, _, c in firsts].count(True) == 1
    document_id = firsts[0][0]["id"]
    stored = await asyncio.gather(*(store(f"v{i}".encode(), document_id=document_id, external_ref=None)
                                    for i in range(2, 7)))
    assert sorted(version["version_no"] for _, version, _ in stored) == [2, 3, 4, 5, 6]
    async with ecm.uow() as uow:
        assert [v["version_no"] for v in await uow.documents.versions(document_id)] == [1, 2, 3, 4, 5, 6]


async def test_a_double_click_on_approve_is_one_decision(ecm, people):
    """The same approver's decision sent twice at the same moment (a double click, a client
    resending): one is taken, the other is refused as already decided; the approval sheet
    and the CRM hear of one decision. On SQLite, where `FOR UPDATE` is no clause at all,
    both used to read the stage as pending and both were recorded."""
    approval_id, _ = await start(ecm)
    results = await asyncio.gather(*(decide(ecm, approval_id, people["legal"]) for _ in range(2)),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Approval", "DecisionNotAllowed"]
    async with ecm.uow() as uow:
        history = await uow.history.of(cases.APPROVAL, approval_id)
        approval = await uow.approvals.get(approval_id)
    assert [h["action"] for h in history] == ["started", "decided"]
    assert [e["event"] for e in await events(ecm, approval_id)] == ["started", "stage_decided"]
    assert approval.current_step.name == "finance"


async def test_two_approvers_of_one_stage_deciding_at_the_same_moment_both_count(ecm, people):
    """A stage that needs both of its two approvers, and both decide at once: each decision
    is kept and the stage passes (neither transaction writes the stage back over the
    other's decision)."""
    admin = User(id="admin-id", name="ecm-admin", role="admin")
    await cases.change_route(ecm.uow(), doc_type="contract", user=admin, spec={"stages": [
        {"name": "legal pair", "assignees": [{"role": "legal"}, {"role": "legal"}]},
        {"name": "director", "role": "director"}]})
    approval_id, _ = await start(ecm)
    second_legal = await person(ecm, f"legal-{uuid.uuid4().hex[:6]}", "legal")
    await asyncio.gather(decide(ecm, approval_id, people["legal"]), decide(ecm, approval_id, second_legal))
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(approval_id)
        history = await uow.history.of(cases.APPROVAL, approval_id)
    assert approval.current_step.name == "director"
    assert sorted(h["data"]["by"] for h in history if h["action"] == "decided") == sorted(
        [people["legal"].name, second_legal.name])


async def test_contract_waits_for_a_verified_counterparty_before_its_last_stage(ecm, people):
    approval_id, _ = await start(ecm, ids=VALID)
    await decide(ecm, approval_id, people["legal"])
    approval = await decide(ecm, approval_id, people["finance"])
    assert approval.status == "awaiting_counterparty_verification"
    await steward.verify(ecm.uow(), counterparty_id=approval.counterparty_id, user=people["steward"],
                         reason="checked in EGRUL", correlation_id="c")
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(approval_id)
    assert approval.status == "in_progress" and approval.current_step.status == "pending"
    approval = await decide(ecm, approval_id, people["director"])
    assert approval.status == "approved"
    assert [(e["event"], e["status"]) for e in await events(ecm, approval_id)][-3:] == [
        ("stage_decided", "awaiting_counterparty_verification"), ("counterparty_verified", "in_progress"),
        ("completed", "approved")]


async def test_the_steward_queue_puts_the_records_approvals_wait_on_first(ecm, people):
    """The queue was the first hundred pending records by name: one holding up a contract
    could sit out of sight behind thousands of bare names from sales."""
    async with ecm.uow() as uow:
        _, before = await uow.counterparties.steward_queue(limit=1000)
    bare = ExternalRef(system="crm", id=str(uuid.uuid4()))  # pending, the oldest, no approval
    await command(ecm, ecm_commands.SYNC_COUNTERPARTY,
                  ecm_commands.SyncCounterpartyV1(external_ref=bare, name="ООО «Без согласований»", **valid_ids()))
    under_way, _ = await start(ecm, ids=valid_ids())  # at legal: may come to wait
    waiting = []
    for _ in range(2):  # each at the director's stage, waiting for a verified counterparty
        approval_id, _ = await start(ecm, ids=valid_ids())
        await decide(ecm, approval_id, people["legal"])
        assert (await decide(ecm, approval_id, people["finance"])).status == "awaiting_counterparty_verification"
        waiting.append(approval_id)
    async with ecm.uow() as uow:
        first, second, open_one = [(await uow.approvals.get(a)).counterparty_id for a in (*waiting, under_way)]
        bare_id = await uow.external_refs.find("counterparty", bare)
        queue, totals = await uow.counterparties.steward_queue(limit=1000)
    ours = [(q["record"].id, q["open_approvals"], q["waiting_approvals"]) for q in queue
            if q["record"].id in {first, second, open_one, bare_id}]
    assert ours == [(first, 1, 1), (second, 1, 1), (open_one, 1, 0), (bare_id, 0, 0)]
    assert [q["record"].id for q in queue][:2] == [first, second]  # before every other pending record
    assert queue[0]["waiting_since"] <= queue[1]["waiting_since"]
    assert totals == {"pending": before["pending"] + 4, "with_open_approvals": before["with_open_approvals"] + 3,
                      "holding_approvals": before["holding_approvals"] + 2}

    await verify(ecm, people, first)  # verified: off the queue, its approval goes on
    async with ecm.uow() as uow:
        queue, totals = await uow.counterparties.steward_queue(limit=2)
    assert [q["record"].id for q in queue][:1] == [second] and len(queue) == 2  # the page shows `limit`
    assert (totals["pending"], totals["holding_approvals"]) == (before["pending"] + 3, before["holding_approvals"] + 1)


async def verify(ecm, people, counterparty_id):
    return await steward.verify(ecm.uow(), counterparty_id=counterparty_id, user=people["steward"],
                                reason="checked in EGRUL", correlation_id="c")


async def status_and_stage(ecm, approval_id) -> tuple[str, str]:
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(approval_id)
    return approval.status, approval.current_step.name


async def at_finance(ecm, people) -> tuple[str, str]:
    """An approval with legal's decision made, at finance, the stage before the last; its
    counterparty pending with identifiers a steward can verify: (approval, counterparty)."""
    approval_id, _ = await start(ecm, ids=valid_ids())
    await decide(ecm, approval_id, people["legal"])
    async with ecm.uow() as uow:
        return approval_id, (await uow.approvals.get(approval_id)).counterparty_id


async def test_a_decision_and_the_counterpartys_verification_at_the_same_moment_never_leave_it_waiting(ecm, people):
    """Finance approves the stage before the last while the steward verifies the company.
    The decision read the counterparty as pending, and the verification looked for
    waiting approvals before the decision had committed one: on PostgreSQL the approval
    waited for a verified counterparty for good (7 rounds of 8 here, in each of five
    runs). Each round ends at the director's stage, open."""
    rounds = []
    for _ in range(8):
        approval_id, counterparty_id = await at_finance(ecm, people)
        await asyncio.gather(decide(ecm, approval_id, people["finance"]), verify(ecm, people, counterparty_id))
        rounds.append(await status_and_stage(ecm, approval_id))
    assert rounds == [("in_progress", "director")] * 8


async def test_a_verification_locks_the_approvals_before_the_history_chain(ecm, people, monkeypatch):
    """The order of locks that keeps the fix above free of deadlocks: a decision holds
    its approval and takes the history chain at its commit, so the verification must
    take the approvals before the chain, not after. Here the decision holds its
    approval until the verification has written its history entry, or for a second if
    the verification is waiting for the approval first (the right order). Taking the
    approvals after the entry deadlocks on PostgreSQL (and failed this test)."""
    approval_id, counterparty_id = await at_finance(ecm, people)
    entry_written = asyncio.Event()
    append_now, is_verified = HistoryLog.append_now, cases.counterparty_is_verified

    async def append_and_tell(self, **kwargs):
        seq = await append_now(self, **kwargs)
        entry_written.set()
        return seq

    async def held_until_the_entry(uow, counterparty_id):
        try:
            await asyncio.wait_for(entry_written.wait(), 1.0)
        except TimeoutError:
            pass
        return await is_verified(uow, counterparty_id)

    monkeypatch.setattr(HistoryLog, "append_now", append_and_tell)
    monkeypatch.setattr(cases, "counterparty_is_verified", held_until_the_entry)
    await asyncio.gather(decide(ecm, approval_id, people["finance"]), verify(ecm, people, counterparty_id))
    assert await status_and_stage(ecm, approval_id) == ("in_progress", "director")


async def test_an_approval_starting_as_its_counterparty_is_verified_does_not_wait(ecm, people):
    """A one-stage route that needs a verified counterparty: the start and the steward's
    verification at the same moment. The start read the record as pending and waited;
    the verification found no waiting approval yet. `verified_meanwhile` reads the record
    again under its lock before the approval waits."""
    admin = User(id="admin-id", name="ecm-admin", role="admin")
    await cases.change_route(ecm.uow(), doc_type="contract", user=admin,
                             spec={"stages": [{"name": "director", "role": "director"}]})
    rounds = []
    for _ in range(8):
        doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode())
        org, request = (ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(2))
        await command(ecm, ecm_commands.SYNC_COUNTERPARTY, ecm_commands.SyncCounterpartyV1(
            external_ref=org, name="ООО «Вектор»", **valid_ids()))
        async with ecm.uow() as uow:
            counterparty_id = await uow.external_refs.find(steward.COUNTERPARTY, org)
        await asyncio.gather(
            command(ecm, ecm_commands.START_APPROVAL, ecm_commands.StartApprovalV1(
                external_ref=request, counterparty_ref=org, initiator_ref=ExternalRef(system="crm", id="u"),
                document_id=doc["id"], document_version_id=version["id"], sha256=version["sha256"],
                doc_type="contract", title="Договор поставки")),
            verify(ecm, people, counterparty_id))
        async with ecm.uow() as uow:
            approval_id = await uow.external_refs.find(cases.APPROVAL, request)
        rounds.append(await status_and_stage(ecm, approval_id))
    assert rounds == [("in_progress", "director")] * 8


async def test_a_merge_into_a_verified_record_as_a_decision_lands_resumes_the_moved_approval(ecm, people):
    """The steward merges a duplicate into a verified record while finance's decision puts
    the duplicate's approval into the wait: the approval moves to the survivor and goes
    on, and neither transaction fails (the merge locks the approvals before the history
    chain, as the decision does)."""
    survivor_ref = ExternalRef(system="crm", id=str(uuid.uuid4()))
    await command(ecm, ecm_commands.SYNC_COUNTERPARTY, ecm_commands.SyncCounterpartyV1(
        external_ref=survivor_ref, name="ООО «Вектор-Плюс»", **valid_ids()))
    async with ecm.uow() as uow:
        survivor_id = await uow.external_refs.find(steward.COUNTERPARTY, survivor_ref)
    await verify(ecm, people, survivor_id)
    rounds = []
    for _ in range(6):
        approval_id, duplicate_id = await at_finance(ecm, people)
        await asyncio.gather(
            decide(ecm, approval_id, people["finance"]),
            steward.merge(ecm.uow(), counterparty_id=duplicate_id, into_id=survivor_id, user=people["steward"],
                          reason="the same company", correlation_id="c"))
        async with ecm.uow() as uow:
            counterparty_id = (await uow.approvals.get(approval_id)).counterparty_id
        rounds.append((*await status_and_stage(ecm, approval_id), counterparty_id == survivor_id))
    assert rounds == [("in_progress", "director", True)] * 6


async def test_deadline_clock_reminds_then_escalates_once_and_delay_reasons_are_reported(ecm, people):
    approval_id, _ = await start(ecm)
    now = datetime.now(timezone.utc)
    assert await cases.check_deadlines(ecm.uow(), now=now + timedelta(hours=21)) == {"reminded": 1, "escalated": 0}
    assert await cases.check_deadlines(ecm.uow(), now=now + timedelta(hours=25)) == {"reminded": 0, "escalated": 1}
    assert await cases.check_deadlines(ecm.uow(), now=now + timedelta(hours=26)) == {"reminded": 0, "escalated": 0}
    async with ecm.uow() as uow:
        legal_notes = await uow.notifications.for_actor(people["legal"])
        director_notes = await uow.notifications.for_actor(people["director"])
    assert [n["kind"] for n in legal_notes] == ["reminder"] and [n["kind"] for n in director_notes] == ["escalation"]
    overdue = (await events(ecm, approval_id))[-1]
    assert (overdue["event"], overdue["overdue"], overdue["stage"]) == ("overdue", True, "legal")

    with pytest.raises(ValueError, match="unknown delay reason"):
        await cases.record_delay_reason(ecm.uow(), approval_id=approval_id, actor=people["legal"], code="bored",
                                        text=None, codes=ecm.delay_reasons)
    await cases.record_delay_reason(ecm.uow(), approval_id=approval_id, actor=people["legal"], code="workload",
                                    text="quarter close", codes=ecm.delay_reasons)
    last = (await events(ecm, approval_id))[-1]
    assert last["delay_reason_code"] == "workload" and "quarter close" not in str(last)
    # The escalation role may now decide the overdue stage.
    approval = await decide(ecm, approval_id, people["director"])
    assert approval.current_step.name == "finance"
    async with ecm.uow() as uow:
        report = await uow.delay_reasons.report()
    assert report == [{"stage_name": "legal", "role": "legal", "doc_type": "contract", "code": "workload",
                       "count": 1}]


async def test_documents_are_visible_to_owner_participants_and_granted_roles_only(ecm, people):
    _, doc = await start(ecm, doc_type="memo")  # default type: legal is granted; finance is not on its route
    today = date.today()
    as_user = {role: User(id=a.id, name=a.name, role=a.role) for role, a in people.items()}
    async with ecm.uow() as uow:
        seen = {role: await can_read_document(uow, u, doc, ecm.document_types, today) for role, u in as_user.items()}
        auditor = await can_read_document(uow, User("x", "aud", "auditor"), doc, ecm.document_types, today)
        owner = await can_read_document(uow, User("integration", "bridge", "integration"), doc, ecm.document_types,
                                        today)
    assert seen == {"legal": True, "finance": False, "director": True, "steward": False}
    assert auditor and owner


async def test_a_batch_of_commands_reads_once_for_all_and_keeps_each_commands_meaning(ecm, people):
    """A consumed batch (syncs, starts, a start repeated under another command id) applied
    in one transaction: the reads are asked once for the batch (prefetched references,
    document versions and counterparty statuses), so each further start costs only its
    writes; the results are those of applying the commands one by one."""
    from sqlalchemy import event

    from ecm_service.service_layer.commands import apply_commands

    verified_org = ExternalRef(system="crm", id=str(uuid.uuid4()))
    await command(ecm, ecm_commands.SYNC_COUNTERPARTY,
                  ecm_commands.SyncCounterpartyV1(external_ref=verified_org, name="ООО «Гранит»", **VALID))
    async with ecm.uow() as uow:
        verified_id = await uow.external_refs.find(cases.COUNTERPARTY, verified_org)
    await steward.verify(ecm.uow(), counterparty_id=verified_id, user=people["steward"], reason="checked",
                         correlation_id="c")

    def envelope(type_, payload):
        return parse_message(encode(new_envelope(type=type_, schema_version=1, source="it", correlation_id="c",
                                                 payload=payload)))

    async def batch(starts: int) -> tuple[list, list[ExternalRef], ExternalRef, int]:
        new_org = ExternalRef(system="crm", id=str(uuid.uuid4()))
        messages = [envelope(ecm_commands.SYNC_COUNTERPARTY,
                             ecm_commands.SyncCounterpartyV1(external_ref=new_org, name="ООО «Луч»"))]
        requests = []
        for i in range(starts):
            doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode())
            request = ExternalRef(system="crm", id=str(uuid.uuid4()))
            requests.append(request)
            messages.append(envelope(ecm_commands.START_APPROVAL, ecm_commands.StartApprovalV1(
                external_ref=request, counterparty_ref=new_org if i % 2 else verified_org,
                initiator_ref=ExternalRef(system="crm", id="u"), document_id=doc["id"],
                document_version_id=version["id"], sha256=version["sha256"], doc_type="contract",
                title="Договор поставки")))
        messages.append(envelope(ecm_commands.START_APPROVAL, messages[1].payload))  # the first start, resent
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(ecm.engine.sync_engine, "before_cursor_execute", listener)
        try:
            await apply_commands(ecm.uow(), messages, "it", ecm.routes, ecm.document_types)
        finally:
            event.remove(ecm.engine.sync_engine, "before_cursor_execute", listener)
        return messages, requests, new_org, len(statements)

    _, _, _, for_two = await batch(2)
    messages, requests, new_org, for_six = await batch(6)
    # Each start writes its approval, steps, assignments, reference and history entry;
    # the reads (request and counterparty references, version, status) are per batch.
    assert (for_six - for_two) / 4 <= 5, (for_two, for_six)

    async with ecm.uow() as uow:
        new_id = await uow.external_refs.find(cases.COUNTERPARTY, new_org)
        approval_ids = [await uow.external_refs.find(cases.APPROVAL, r) for r in requests]
        approvals = [await uow.approvals.get(i) for i in approval_ids]
        a = tables.approvals
        for_first = (await uow.session.execute(
            select(a.c.id).where(a.c.document_id == approvals[0].document_id))).scalars().all()
    assert new_id and new_id != verified_id and all(approval_ids)
    assert [x.counterparty_id for x in approvals] == [verified_id, new_id] * 3
    assert for_first == [approval_ids[0]]  # the resent start started nothing new
    started = await events(ecm, approval_ids[0])
    assert [e["event"] for e in started] == ["started"]
    assert started[0]["external_refs"] == [requests[0].model_dump()]


async def test_a_withdrawal_closes_an_open_approval_and_leaves_a_finished_one_as_it_ended(ecm, people):
    """`ecm.withdraw_approval`: the open approval ends `withdrawn` with the rep's reason,
    its open places no longer need anyone (a decision is refused), the stage's approvers
    are told, the history chain and the public event (v3, `withdrawn_by`) say who and
    why. A replay changes nothing; an approval already finished keeps its outcome."""
    approval_id, _ = await start(ecm)
    await decide(ecm, approval_id, people["legal"])
    async with ecm.uow() as uow:
        (request_ref,) = await uow.external_refs.refs_of(cases.APPROVAL, approval_id)
    withdrawal = ecm_commands.WithdrawApprovalV1(
        external_ref=request_ref, withdrawn_by_ref=ExternalRef(system="crm", id="rep"),
        withdrawn_at=datetime.now(timezone.utc), reason="The client chose another supplier")
    envelope = new_envelope(type=ecm_commands.WITHDRAW_APPROVAL, schema_version=1, source="it", correlation_id="c",
                            payload=withdrawal)
    for _ in range(2):  # the second is a replay of the same message
        await apply_command(ecm.uow(), parse_message(encode(envelope)), "it", ecm.routes, ecm.document_types)
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(approval_id)
        history = await uow.history.of(cases.APPROVAL, approval_id)
        notes = (await uow.session.execute(select(tables.notifications.c.kind, tables.notifications.c.to_role,
                                                  tables.notifications.c.text)
                                           .where(tables.notifications.c.approval_id == approval_id))).all()
    assert (approval.status, approval.current_stage_no, approval.reason) == (
        "withdrawn", None, "The client chose another supplier")
    assert [a.status for a in approval.assignments if a.stage_no == 2] == ["not_needed"]
    assert [s.status for s in approval.steps] == ["approved", "not_needed", "waiting"]
    assert [(h["action"], h["actor"], h["reason"]) for h in history][-1] == (
        "withdrawn", "crm:rep", "The client chose another supplier")
    assert notes == [("withdrawn", "finance",
                      "«Договор поставки» was withdrawn by the requester: The client chose another supplier")]
    published = await events(ecm, approval_id)
    assert [e["event"] for e in published] == ["started", "stage_decided", "withdrawn"]
    assert published[-1]["status"] == "withdrawn" and published[-1]["withdrawn_by"] == {"system": "crm", "id": "rep"}
    assert published[-1]["reason"] == "The client chose another supplier" and published[-1]["stage"] is None
    with pytest.raises(ApprovalClosed, match="withdrawn"):
        await decide(ecm, approval_id, people["finance"])

    finished_id, _ = await start(ecm)
    await decide(ecm, finished_id, people["legal"], "reject", comment="not our terms")
    async with ecm.uow() as uow:
        (finished_ref,) = await uow.external_refs.refs_of(cases.APPROVAL, finished_id)
    await command(ecm, ecm_commands.WITHDRAW_APPROVAL, withdrawal.model_copy(update={"external_ref": finished_ref}))
    async with ecm.uow() as uow:
        assert (await uow.approvals.get(finished_id)).status == "rejected"
    assert [e["event"] for e in await events(ecm, finished_id)][-1] == "completed"



def _start_and_withdrawal(doc, version) -> tuple[ExternalRef, list[Message]]:
    """A request's sync, start and withdrawal, as messages (the start and the withdrawal
    last, in that order)."""
    org, request = (ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(2))
    payloads = [
        (ecm_commands.SYNC_COUNTERPARTY, ecm_commands.SyncCounterpartyV1(external_ref=org, name="ООО «Вектор»")),
        (ecm_commands.START_APPROVAL, ecm_commands.StartApprovalV1(
            external_ref=request, counterparty_ref=org, initiator_ref=ExternalRef(system="crm", id="u"),
            document_id=doc["id"], document_version_id=version["id"], sha256=version["sha256"],
            doc_type="contract", title="Договор поставки")),
        (ecm_commands.WITHDRAW_APPROVAL, ecm_commands.WithdrawApprovalV1(
            external_ref=request, withdrawn_by_ref=ExternalRef(system="crm", id="u"),
            withdrawn_at=datetime.now(timezone.utc), reason="sent by mistake")),
    ]
    return request, [parse_message(encode(new_envelope(type=t, schema_version=1, source="it", correlation_id="c",
                                                       payload=p))) for t, p in payloads]


async def _kept_withdrawals(ecm) -> list[tuple[str, str]]:
    w = tables.withdrawals_before_start
    async with ecm.session_factory() as session:
        return [tuple(r) for r in await session.execute(select(w.c.external_id, w.c.reason))]


async def test_a_withdrawal_that_comes_before_its_start_is_kept_and_the_start_then_ends_withdrawn(ecm):
    """The start held up or dead-lettered (or overtaken after a CRM merge moved the
    request's partition): the withdrawal arrives first. It was dead-lettered, for the
    operator to replay after the start, and meanwhile a replayed start ran an approval
    nobody wanted. Now it is kept, and the start begins the approval and withdraws it."""
    doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode())
    request, (sync, start_, withdrawal) = _start_and_withdrawal(doc, version)
    await apply_command(ecm.uow(), sync, "it", ecm.routes, ecm.document_types)
    for _ in range(2):  # the second a replay of the same message
        await apply_command(ecm.uow(), withdrawal, "it", ecm.routes, ecm.document_types)
    again = ecm_commands.WithdrawApprovalV1(**{**withdrawal.payload.model_dump(), "reason": "another reason"})
    await command(ecm, ecm_commands.WITHDRAW_APPROVAL, again)  # a second withdrawal keeps the first
    assert await _kept_withdrawals(ecm) == [(request.id, "sent by mistake")]

    for _ in range(2):  # the start, then a replay of it
        await apply_command(ecm.uow(), start_, "it", ecm.routes, ecm.document_types)
    async with ecm.uow() as uow:
        approval_id = await uow.external_refs.find(cases.APPROVAL, request)
        approval = await uow.approvals.get(approval_id)
        history = await uow.history.of(cases.APPROVAL, approval_id)
        notes = (await uow.session.execute(select(tables.notifications.c.kind)
                                           .where(tables.notifications.c.approval_id == approval_id))).all()
    assert (approval.status, approval.reason, approval.current_stage_no) == ("withdrawn", "sent by mistake", None)
    assert {p.status for p in approval.assignments} == {"not_needed"}
    assert [(h["action"], h["actor"], h["reason"], h["data"].get("before_start")) for h in history] == [
        ("started", "crm:u", None, None), ("withdrawn", "crm:u", "sent by mistake", True)]
    assert notes == []  # nobody had it in an inbox
    published = await events(ecm, approval_id)
    assert [(e["event"], e["status"]) for e in published] == [("started", "in_progress"), ("withdrawn", "withdrawn")]
    assert published[-1]["withdrawn_by"] == {"system": "crm", "id": "u"}
    assert await _kept_withdrawals(ecm) == []

    # In one consumed batch, the withdrawal ahead of its start: the same.
    doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode())
    request, (sync, start_, withdrawal) = _start_and_withdrawal(doc, version)
    await apply_commands(ecm.uow(), [sync, withdrawal, start_], "it", ecm.routes, ecm.document_types)
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(await uow.external_refs.find(cases.APPROVAL, request))
    assert (approval.status, approval.reason) == ("withdrawn", "sent by mistake")
    assert await _kept_withdrawals(ecm) == []


async def test_a_withdrawal_kept_while_its_start_committed_elsewhere_is_settled_by_the_deadline_clock(ecm):
    """Two replicas take a request's start and its withdrawal (different partitions after
    a CRM merge) at the same moment: the start does not see the kept withdrawal, the
    withdrawal does not see the approval. The deadline clock finds the two met and
    withdraws the approval; its stage's approvers are told, as for any withdrawal."""
    approval_id, _ = await start(ecm)
    async with ecm.uow() as uow:
        (request_ref,) = await uow.external_refs.refs_of(cases.APPROVAL, approval_id)
        # what the withdrawal's transaction wrote, not having seen the approval
        await uow.approvals.remember_withdrawal_before_start(
            request_ref, reason="deal lost", withdrawn_by="crm:rep", withdrawn_at=datetime.now(timezone.utc),
            command_id=str(uuid.uuid4()), received_at=datetime.now(timezone.utc))
        await uow.commit()
    assert await cases.deadline_clock_tick(ecm.uow) == {"reminded": 0, "escalated": 0, "withdrawn": 1}
    assert await cases.deadline_clock_tick(ecm.uow) == {"reminded": 0, "escalated": 0, "withdrawn": 0}
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(approval_id)
        notes = (await uow.session.execute(select(tables.notifications.c.kind, tables.notifications.c.to_role)
                                           .where(tables.notifications.c.approval_id == approval_id))).all()
    assert (approval.status, approval.reason) == ("withdrawn", "deal lost")
    assert notes == [("withdrawn", "legal")]
    assert [(e["event"], e["withdrawn_by"]) for e in await events(ecm, approval_id)][-1] == (
        "withdrawn", {"system": "crm", "id": "rep"})
    assert await _kept_withdrawals(ecm) == []


async def test_a_start_and_its_withdrawal_in_one_consumed_batch_end_withdrawn(ecm):
    """The bridge can hand the ECM a request's start and its withdrawal in one batch (the
    rep withdrew at once): the withdrawal finds the approval the start made earlier in
    the same transaction, and no command of the batch is dead-lettered."""
    doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode())
    request, messages = _start_and_withdrawal(doc, version)
    await apply_commands(ecm.uow(), messages, "it", ecm.routes, ecm.document_types)
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(await uow.external_refs.find(cases.APPROVAL, request))
    assert (approval.status, approval.reason) == ("withdrawn", "sent by mistake")
    assert [e["event"] for e in await events(ecm, approval.id)] == ["started", "withdrawn"]


async def test_an_admin_sees_the_withdrawals_waiting_for_their_start_and_lets_one_go(ecm_app):
    """A withdrawal whose start never comes (its dead letter discarded) waited unseen. It
    is counted and aged on /metrics (alert WithdrawalWaitsForItsStart), listed for an
    admin, and an admin lets it go; a start that comes after that runs as any other."""
    client, tokens, ecm = ecm_app
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode())
    request, (sync, start_, withdrawal) = _start_and_withdrawal(doc, version)
    await apply_command(ecm.uow(), sync, "it", ecm.routes, ecm.document_types)
    await apply_command(ecm.uow(), withdrawal, "it", ecm.routes, ecm.document_types)

    await refresh_approval_gauges(ecm.session_factory)
    assert REGISTRY.get_sample_value("ecm_withdrawals_before_start") == 1
    assert REGISTRY.get_sample_value("ecm_withdrawal_before_start_oldest_age_seconds") >= 0
    listed = (await client.get("/api/admin/withdrawals-before-start", headers=admin)).json()
    assert listed["total"] == 1
    (item,) = listed["items"]
    assert (item["request_ref"], item["reason"], item["withdrawn_by"], item["command_id"]) == (
        {"system": "crm", "id": request.id}, "sent by mistake", "crm:u", str(withdrawal.envelope.event_id))
    assert item["waiting_seconds"] >= 0

    path = f"/api/admin/withdrawals-before-start/crm/{request.id}"
    gone = await client.delete(path, headers=admin)
    assert gone.status_code == 200 and gone.json()["discarded"]["request_ref"]["id"] == request.id
    again = await client.delete(path, headers=admin)
    assert again.status_code == 404 and request.id in again.json()["detail"]
    too_long = await client.delete(f"/api/admin/withdrawals-before-start/crm/{'x' * 65}", headers=admin)
    assert too_long.status_code == 422
    assert (await client.get("/api/admin/withdrawals-before-start", headers=admin)).json() == {"total": 0, "items": []}
    await refresh_approval_gauges(ecm.session_factory)
    assert REGISTRY.get_sample_value("ecm_withdrawals_before_start") == 0
    assert REGISTRY.get_sample_value("ecm_withdrawal_before_start_oldest_age_seconds") == 0

    await apply_command(ecm.uow(), start_, "it", ecm.routes, ecm.document_types)
    async with ecm.uow() as uow:
        approval = await uow.approvals.get(await uow.external_refs.find(cases.APPROVAL, request))
    assert approval.status == "in_progress"
