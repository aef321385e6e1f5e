"""Match-or-propose on both backends through the soft-sync command: link, propose with
evidence, new; the steward's decisions are recorded as confirmed or overturned."""

import asyncio
import json
import uuid

import pytest
from sqlalchemy import event, func, select

from ecm_service.adapters import tables
from ecm_service.service_layer import steward
from ecm_service.service_layer.commands import apply_command, apply_commands
from infra.users import User
from schemas import ecm_commands
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import encode, parse_message
from tests.support.meanwhile import start_meanwhile

SBER = {"inn": "7707083893", "kpp": "773601001", "ogrn": "1027700132195"}
STEWARD = User(id="steward-id", name="steward", role="steward")


async def sync(ecm, name: str, **ids) -> tuple[str, dict]:
    ref = ExternalRef(system="crm", id=str(uuid.uuid4()))
    envelope = new_envelope(type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="it", correlation_id="c",
                            payload=ecm_commands.SyncCounterpartyV1(external_ref=ref, name=name, **ids))
    await apply_command(ecm.uow(), parse_message(encode(envelope)), "it", ecm.routes, ecm.document_types)
    async with ecm.uow() as uow:
        counterparty_id = await uow.external_refs.find("counterparty", ref)
        (decision,) = [d for d in await uow.counterparties.match_decisions_of([counterparty_id])
                       if d["source_ref"] == ref.as_text()]
    return counterparty_id, decision


async def test_link_propose_and_new_with_evidence_and_the_stewards_review(ecm):
    sber_id, first = await sync(ecm, "ПАО «Сбербанк России»", **SBER)
    assert first["outcome"] == "new"
    await steward.verify(ecm.uow(), counterparty_id=sber_id, user=STEWARD, reason="EGRUL", correlation_id="c")

    linked_id, linked = await sync(ecm, "Сбер", inn=SBER["inn"], kpp=SBER["kpp"])
    assert (linked_id, linked["outcome"], linked["rule"]) == (sber_id, "link", "inn_kpp")

    branch_id, branch = await sync(ecm, "Сбербанк, Поволжский банк", inn=SBER["inn"], kpp="631602001")
    assert branch_id != sber_id and (branch["outcome"], branch["rule"]) == ("propose", "same_inn_other_kpp")
    evidence = branch["candidates"][0]
    assert evidence["counterparty_id"] == sber_id and evidence["agree"] == ["inn"] and evidence["differ"] == ["kpp"]

    latin_id, latin = await sync(ecm, "Sberbank Rossii PAO")
    assert latin["outcome"] == "propose" and latin["candidates"][0]["counterparty_id"] == sber_id
    assert latin["candidates"][0]["rules"] == ["similar_name"]

    _, typo = await sync(ecm, "Сбербанк России", inn="7707083839")  # two digits swapped
    assert typo["outcome"] == "propose" and "inn_one_digit_from_verified" in typo["candidates"][0]["rules"]

    new_id, new = await sync(ecm, "ООО «Незабудка»")
    assert new["outcome"] == "new" and new["candidates"] == []

    # The steward: the Latin spelling is the bank (confirmed); the branch is not (overturned).
    await steward.merge(ecm.uow(), counterparty_id=latin_id, into_id=sber_id, user=STEWARD, reason="same bank",
                        correlation_id="c")
    await steward.mark_not_duplicate(ecm.uow(), counterparty_id=branch_id, other_id=sber_id, user=STEWARD,
                                     reason="a branch with its own KPP")
    async with ecm.session_factory() as session:
        reviews = dict((await session.execute(select(tables.match_decisions.c.counterparty_id,
                                                     tables.match_decisions.c.review))).all())
    assert reviews[latin_id] == "confirmed" and reviews[branch_id] == "overturned"
    assert reviews[new_id] is None
    async with ecm.uow() as uow:
        shown = await steward.candidates_for(uow, await uow.counterparties.get(branch_id))
    assert shown == []  # declared distinct: never proposed again


async def _merge_refs(ecm, merged: ExternalRef, survivor: ExternalRef):
    from datetime import datetime, timezone

    envelope = new_envelope(type=ecm_commands.MERGE_EXTERNAL_REFS, schema_version=1, source="it", correlation_id="c",
                            payload=ecm_commands.MergeExternalRefsV1(merged_ref=merged, survivor_ref=survivor,
                                                                     merged_at=datetime.now(timezone.utc)))
    await apply_command(ecm.uow(), parse_message(encode(envelope)), "it", ecm.routes, ecm.document_types)


async def _synced_ref(ecm, name: str) -> tuple[ExternalRef, str]:
    """A new CRM organization soft-synced: its reference and the record it went to."""
    ref = ExternalRef(system="crm", id=str(uuid.uuid4()))
    envelope = new_envelope(type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="it", correlation_id="c",
                            payload=ecm_commands.SyncCounterpartyV1(external_ref=ref, name=name))
    await apply_command(ecm.uow(), parse_message(encode(envelope)), "it", ecm.routes, ecm.document_types)
    async with ecm.uow() as uow:
        return ref, await uow.external_refs.find("counterparty", ref)


async def test_after_a_crm_merge_the_registry_refs_follow_the_survivor(ecm):
    async def ref_of(name):
        return (await _synced_ref(ecm, name))[0]

    async def owner(ref):
        async with ecm.uow() as uow:
            return await uow.external_refs.find("counterparty", ref)

    merged = await ref_of("ООО «Вектор»")
    record = await owner(merged)
    survivor = ExternalRef(system="crm", id=str(uuid.uuid4()))  # never synced
    await _merge_refs(ecm, merged, survivor)
    assert await owner(survivor) == record and await owner(merged) is None
    async with ecm.session_factory() as session:
        synced = (await session.execute(select(tables.outbox.c.body).where(
            tables.outbox.c.message_type == "ecm.counterparty_synced"))).scalars().all()
    assert any(survivor.id in body for body in synced)  # the CRM survivor learns its link

    one, two = await ref_of("ООО «Альфа»"), await ref_of("ООО «Бета»")
    first, second = await owner(one), await owner(two)
    await _merge_refs(ecm, one, two)  # different records: both kept, recorded for the steward
    assert (await owner(one), await owner(two)) == (first, second)
    async with ecm.uow() as uow:
        assert any(h["action"] == "external_refs_merged" and h["data"]["outcome"] == "conflict"
                   for h in await uow.history.of("counterparty", first))


async def test_crm_merges_of_a_chain_heard_in_the_other_order_still_reach_the_last_survivor(ecm):
    """The CRM merged A into B, then B into C. Each merge is keyed by its merged
    organization, so the two travel on different partitions and a backlog (the bridge
    away for a while) can deliver them in either order. Heard B-into-C first, the merge
    of A went to B, an organization the CRM had already merged away: A's registry
    reference became B's and stayed there. The registry now remembers each CRM merge and
    follows it: A's reference goes to C."""
    a, record = await _synced_ref(ecm, "ООО «Ромашка»")
    b, c = (ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(2))  # never synced
    await _merge_refs(ecm, b, c)
    await _merge_refs(ecm, a, b)
    async with ecm.uow() as uow:
        owners = [await uow.external_refs.find("counterparty", ref) for ref in (a, b, c)]
        history = await uow.history.of("counterparty", record)
    assert owners == [None, None, record]
    [entry] = [h for h in history if h["action"] == "external_refs_merged"]
    assert entry["data"] == {"merged_ref": a.as_text(), "survivor_ref": c.as_text(), "named_survivor_ref": b.as_text(),
                             "outcome": "ref_moved"}


async def test_crm_merges_of_a_chain_applied_at_the_same_moment_still_reach_the_last_survivor(ecm, monkeypatch):
    """Two replicas apply B-into-C and A-into-B at the same moment. The merge of A is
    sent once B-into-C has found no reference for B and before it commits: it waits
    (merges read under the history chain's lock) and then goes on to C. Without the
    wait, each missed what the other was writing (B-into-C no reference for B yet,
    A-into-B no merge of B yet), and A's reference went to B."""
    from ecm_service.adapters.repositories import ApprovalRepository

    a, record = await _synced_ref(ecm, "ООО «Лютик»")
    b, c = (ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(2))
    # Held in B-into-C, its references looked up.
    meanwhile = start_meanwhile(monkeypatch, ApprovalRepository, "rename_counterparty_ref",
                                lambda: _merge_refs(ecm, a, b))
    await _merge_refs(ecm, b, c)
    await meanwhile[0]
    async with ecm.uow() as uow:
        owners = [await uow.external_refs.find("counterparty", ref) for ref in (a, b, c)]
    assert owners == [None, None, record]


@pytest.mark.parametrize("batched", [True, False], ids=["in_a_batch", "one_by_one"])
async def test_a_request_replayed_after_the_crm_merged_its_organization_names_the_survivor(ecm, batched):
    """An approval request for organization A was dead-lettered before it reached the
    registry; meanwhile the CRM merged A away; then the dead letter is replayed: a sync
    and a start naming A. Before, the sync made a registry reference for A, an
    organization the CRM no longer has, which no merge would ever move, and the approval
    named A. Now both name the organization the merges left: its record when it has one
    (the sync, older than the merge, changes nothing there), else a reference placed for
    it. As a consumed batch (the references looked up together) and one command at a
    time (as the consumer retries a batch that failed)."""
    from tests.integration.test_approvals import store

    async def replay(org: ExternalRef, name: str) -> str:
        doc, version = await store(ecm, f"contract {uuid.uuid4()}".encode())
        request = ExternalRef(system="crm", id=str(uuid.uuid4()))
        messages = [parse_message(encode(new_envelope(
            type=type_, schema_version=1, source="it", correlation_id="c", payload=payload))) for type_, payload in (
            (ecm_commands.SYNC_COUNTERPARTY, ecm_commands.SyncCounterpartyV1(external_ref=org, name=name)),
            (ecm_commands.START_APPROVAL, ecm_commands.StartApprovalV1(
                external_ref=request, counterparty_ref=org, initiator_ref=ExternalRef(system="crm", id="u"),
                document_id=doc["id"], document_version_id=version["id"], sha256=version["sha256"],
                doc_type="contract", title="Договор поставки")))]
        if batched:
            await apply_commands(ecm.uow(), messages, "it", ecm.routes, ecm.document_types)
        else:
            for message in messages:
                await apply_command(ecm.uow(), message, "it", ecm.routes, ecm.document_types)
        async with ecm.uow() as uow:
            return await uow.approvals.get(await uow.external_refs.find("approval", request))

    async def owners(*refs):
        async with ecm.uow() as uow:
            return [await uow.external_refs.find("counterparty", ref) for ref in refs]

    # A, never synced, merged into B, which has its record.
    a = ExternalRef(system="crm", id=str(uuid.uuid4()))
    b, record_b = await _synced_ref(ecm, "ООО «Бета»")
    await _merge_refs(ecm, a, b)
    approval = await replay(a, "ООО «Альфа»")
    assert await owners(a, b) == [None, record_b]
    assert (approval.counterparty_ref, approval.counterparty_id) == (b.as_text(), record_b)
    async with ecm.uow() as uow:
        assert (await uow.counterparties.get(record_b)).name == "ООО «Бета»"  # not A's older data
        history = await uow.history.of("counterparty", record_b)
        started = [h for h in await uow.history.of("approval", approval.id) if h["action"] == "started"]
    assert [h["action"] for h in history] == ["sync_created"]
    assert started[0]["data"]["named_counterparty_ref"] == a.as_text()

    # D merged into E, E into F, none of them synced: the reference is placed for F.
    d, e, f = (ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(3))
    await _merge_refs(ecm, e, f)
    await _merge_refs(ecm, d, e)
    approval = await replay(d, "ООО «Дельта»")
    _, _, record_f = await owners(d, e, f)
    assert await owners(d, e) == [None, None] and record_f is not None
    assert (approval.counterparty_ref, approval.counterparty_id) == (f.as_text(), record_f)
    async with ecm.uow() as uow:
        assert (await uow.counterparties.get(record_f)).name == "ООО «Дельта»"
        [created] = await uow.history.of("counterparty", record_f)
    assert (created["action"], created["data"]["source_ref"], created["data"]["named_ref"]) == (
        "sync_created", f.as_text(), d.as_text())
    async with ecm.session_factory() as session:
        synced = [json.loads(body)["payload"]["source_ref"] for body in (await session.execute(
            select(tables.outbox.c.body).where(tables.outbox.c.message_type == "ecm.counterparty_synced"))).scalars()]
    assert {"system": "crm", "id": f.id} in synced  # F learns its link; A and D are gone from the CRM
    assert not any(ref["id"] in (a.id, d.id, e.id) for ref in synced)


async def test_crm_merges_of_organizations_on_two_records_wait_for_the_steward(ecm_app):
    """Sales merged two CRM organizations whose registry records are two. The merged
    one's reference stays on its record (the registry does not merge records on the
    CRM's word), and the pair waits for the steward in a report and on the queue's page,
    until the steward merges one record into the other or declares them distinct."""
    client, tokens, container = ecm_app
    steward_headers = {"Authorization": f"Bearer {tokens['steward']}"}

    async def held():
        answer = await client.get("/api/reports/merges-held-apart", headers=steward_headers)
        assert answer.status_code == 200, answer.text
        return [(h["merged_ref"], h["survivor_ref"], h["record"]["id"], h["survivor_record"]["id"])
                for h in answer.json()]

    (a, record_a), (b, record_b), (c, record_c), (d, record_d) = [
        await _synced_ref(container, name) for name in ("ООО «Альфа»", "ООО «Бета»", "АО «Гамма»", "ЗАО «Дельта»")]
    await _merge_refs(container, a, b)
    await _merge_refs(container, c, d)
    assert await held() == [(a.as_text(), b.as_text(), record_a, record_b),
                            (c.as_text(), d.as_text(), record_c, record_d)]
    assert (await client.get("/api/reports/merges-held-apart",
                             headers={"Authorization": f"Bearer {tokens['legal']}"})).status_code == 403
    page = await client.get("/ui/steward", cookies={"session": tokens["steward"]})
    assert page.status_code == 200 and f'data-merged-ref="{a.as_text()}"' in page.text
    assert f'action="/ui/steward/{record_a}/not-duplicate"' in page.text
    read_only = await client.get("/ui/steward", cookies={"session": tokens["auditor"]})
    assert f'data-merged-ref="{a.as_text()}"' in read_only.text and "/not-duplicate" not in read_only.text

    distinct = await client.post(f"/ui/steward/{record_a}/not-duplicate", cookies={"session": tokens["steward"]},
                                 data={"other_id": record_b, "reason": "разные компании, менеджер ошибся"})
    assert distinct.status_code == 303 and distinct.headers["location"].endswith("done=not-duplicate")
    merged = await client.post(f"/ui/steward/{record_c}/merge", cookies={"session": tokens["steward"]},
                               data={"other_id": record_d, "reason": "одна компания, ЕГРЮЛ"})
    assert merged.status_code == 303 and merged.headers["location"].endswith("done=merge")
    assert await held() == []
    async with container.uow() as uow:
        assert await uow.external_refs.find("counterparty", c) == record_d  # both references on one record


async def test_the_merges_held_apart_are_read_in_as_many_statements_however_many_there_are(ecm):
    """The steward's queue page lists, on every load, the CRM merges whose registry
    records are still two. The merges the steward declared distinct stay remembered for
    good, and each remembered merge cost about four statements there, so the page grew
    slower with every such pair. Now the list is read a step at a time for all of them:
    held pairs, pairs declared distinct and chains (E into F into G) alike."""
    async def listed() -> tuple[list[tuple[str, str]], int]:
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(ecm.engine.sync_engine, "before_cursor_execute", listener)
        try:
            async with ecm.uow() as uow:
                held = await steward.merges_held_apart(uow)
        finally:
            event.remove(ecm.engine.sync_engine, "before_cursor_execute", listener)
        return [(h["merged_ref"], h["survivor_ref"]) for h in held], len(statements)

    async def more_merges(i: int) -> list[tuple[str, str]]:
        """One merge held apart, one declared distinct, one held at the end of a chain."""
        (a, _), (b, _), (c, record_c), (d, record_d), (e, _), (g, _) = [
            await _synced_ref(ecm, f"ООО «{word} {i}»") for word in ("Азот", "Бор", "Вольфрам", "Гелий", "Европий",
                                                                     "Германий")]
        f = ExternalRef(system="crm", id=str(uuid.uuid4()))  # never synced
        await _merge_refs(ecm, a, b)
        await _merge_refs(ecm, c, d)
        await steward.mark_not_duplicate(ecm.uow(), counterparty_id=record_c, other_id=record_d, user=STEWARD,
                                         reason="branches")
        await _merge_refs(ecm, f, g)
        await _merge_refs(ecm, e, f)
        return [(a.as_text(), b.as_text()), (e.as_text(), g.as_text())]

    expected = await more_merges(0)
    held, few = await listed()
    assert held == expected
    for i in range(1, 5):
        expected += await more_merges(i)
    held, many = await listed()
    assert held == expected and len(held) == 10
    assert many == few, (few, many)


async def _keys_of(ecm, counterparty_id: str) -> set[str]:
    k = tables.counterparty_name_keys
    async with ecm.session_factory() as session:
        return set((await session.execute(select(k.c.key).where(k.c.counterparty_id == counterparty_id))).scalars())


async def test_name_keys_follow_the_record_and_find_slips_and_other_scripts(ecm):
    vector_id, _ = await sync(ecm, "ООО «Векторстрой Поволжье»")
    assert {"t:vektorstroi", "t:povolzhe", "n:povolzhe vektorstroi"} <= await _keys_of(ecm, vector_id)
    for typed in ("Векторсторй Поволжье", "Vektorstroy Povolzhye LLC", "Вектор-строй Поволжье",
                  "поволжье векторстрой"):
        _, decision = await sync(ecm, typed)
        assert decision["outcome"] == "propose", typed
        assert decision["candidates"][0]["counterparty_id"] == vector_id, typed

    # A merged or rejected record is no longer a candidate: its keys are gone.
    twin_id, _ = await sync(ecm, "Векторстрой-Поволжье")
    await steward.merge(ecm.uow(), counterparty_id=twin_id, into_id=vector_id, user=STEWARD, reason="same",
                        correlation_id="c")
    assert await _keys_of(ecm, twin_id) == set()
    _, again = await sync(ecm, "Векторстрой Поволжье")
    assert twin_id not in [c["counterparty_id"] for c in again["candidates"]]


async def test_the_registry_search_reads_the_words_of_the_name_in_any_order(ecm):
    """The registry page's search (`/ui/registry?q=`): "сбербанк пао" found nothing, for
    the normalised name reads 'ПАО СБЕРБАНК РОССИИ'; a text of punctuation alone found
    every record. Lower-case Cyrillic was already found (the name is normalised)."""
    sber_id, _ = await sync(ecm, 'ПАО "Сбербанк России"', **SBER)
    percent_id, _ = await sync(ecm, "100% Fruit")
    await sync(ecm, "ООО «Рога и копыта»")

    async def found(text: str) -> list[str]:
        async with ecm.uow() as uow:
            return sorted(c.id for c in await uow.counterparties.search(text=text, status=None, limit=50))
    assert await found("сбербанк пао") == [sber_id]
    assert await found("россии сбер") == [sber_id]
    assert await found("сбербанк рога") == []
    assert await found("%") == [percent_id]
    assert await found(SBER["inn"]) == [sber_id]


async def test_a_generic_word_alone_finds_nothing_but_thresholds_are_configuration(ecm):
    from ecm_service.domain import matching

    for word in "Альфа Бета Гамма Дельта Заря Исток Каскад Лазурь Нева Орион Полюс Радуга".split():
        await sync(ecm, f"Строй {word}")
    default = matching.THRESHOLDS
    matching.configure(matching.Thresholds(max_postings=10))
    try:
        # "строй" is on twelve records: above the cap it is a generic word, not a key.
        _, decision = await sync(ecm, "Строй")
        assert decision["outcome"] == "new"
        matching.configure(matching.Thresholds(max_postings=50, name_propose=101, slip_min_length=100))
        _, strict = await sync(ecm, "Строй Альфы")
        assert strict["outcome"] == "new"  # the name was close, but the thresholds say no
    finally:
        matching.configure(default)
        from ecm_service.adapters import repositories

        repositories._GENERIC_KEYS.clear()
    _, loose = await sync(ecm, "Строй Альфы")
    assert loose["outcome"] == "propose" and loose["candidates"][0]["rules"] == ["similar_name"]


async def test_worker_processes_answer_a_bulk_batch_as_the_service_process_does(ecm):
    """The initial sync's dry run matches on spawned worker processes (`bulk_matching`),
    each with its own connection: same decisions, same evidence, in the batch's order."""
    from ecm_service.domain.matching import Decision
    from ecm_service.service_layer import bulk_matching
    from ecm_service.service_layer.registry import incoming, match_many

    sber_id, _ = await sync(ecm, "ПАО «Сбербанк России»", **SBER)
    await steward.verify(ecm.uow(), counterparty_id=sber_id, user=STEWARD, reason="EGRUL", correlation_id="c")
    vector_id, _ = await sync(ecm, "ООО «Векторстрой Поволжье»")
    items = [incoming(name="Сбер", inn=SBER["inn"], kpp=SBER["kpp"], ogrn=None),
             incoming(name="Sberbank Rossii PAO", inn=None, kpp=None, ogrn=None),
             incoming(name="Векторсторй Поволжье", inn=None, kpp=None, ogrn=None),
             incoming(name="ООО «Незабудка»", inn=None, kpp=None, ogrn=None),
             incoming(name="Сбербанк, Поволжский банк", inn=SBER["inn"], kpp="631602001", ogrn=None)]
    async with ecm.uow() as uow:
        here = await match_many(uow, items, prefetch=40)
    workers = bulk_matching.MatchWorkers(ecm.settings.database_url, 2)
    try:
        there = await workers.match(items, prefetch=40)
    finally:
        workers.close()
    assert all(isinstance(d, Decision) for d in there)
    assert [(d.outcome, d.rule, d.linked_id, d.candidates) for d in there] == \
        [(d.outcome, d.rule, d.linked_id, d.candidates) for d in here]
    assert [d.outcome for d in there] == ["link", "propose", "propose", "new", "propose"]
    assert there[0].linked_id == sber_id and there[2].candidates[0]["counterparty_id"] == vector_id


async def test_a_killed_matching_worker_costs_no_batch(ecm):
    import os
    import signal

    from structlog.testing import capture_logs

    from ecm_service.service_layer import bulk_matching
    from ecm_service.service_layer.registry import incoming, match_in_parallel

    vector_id, _ = await sync(ecm, "ООО «Векторстрой Поволжье»")
    items = [incoming(name="Векторсторй Поволжье", inn=None, kpp=None, ogrn=None)]
    workers = bulk_matching.MatchWorkers(ecm.settings.database_url, 2)
    bulk_matching.configure(workers)
    try:
        async with ecm.uow() as uow:
            (first,) = await match_in_parallel(uow, items)
            for pid in list(workers._pool._processes):
                os.kill(pid, signal.SIGKILL)
            with capture_logs() as logs:
                (again,) = await match_in_parallel(uow, items)  # matched here while the pool is broken
            assert "match_workers_broken" in [entry["event"] for entry in logs]
            (later,) = await match_in_parallel(uow, items)  # on new workers
        assert workers._pool is not None and all(p.is_alive() for p in workers._pool._processes.values())
    finally:
        bulk_matching.configure(None)
    assert first.candidates[0]["counterparty_id"] == again.candidates[0]["counterparty_id"] == \
        later.candidates[0]["counterparty_id"] == vector_id


def test_matching_workers_end_when_the_service_is_killed(tmp_path):
    """SIGKILL leaves no shutdown to run: the workers notice their parent is gone."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.polling import wait_until

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from ecm_service.service_layer.bulk_matching import MatchWorkers\n"
        "async def main():\n"
        "    workers = MatchWorkers('sqlite+aiosqlite:///' + sys.argv[1], 2)\n"
        "    loop = asyncio.get_running_loop()\n"
        "    pool = workers._executor()\n"
        "    await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.5) for _ in range(2)))\n"
        "    print('workers', *pool._processes, flush=True)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ecm.db")], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE, text=True)
    try:
        line = next(line for line in parent.stdout if line.startswith("workers "))
        pids = [int(pid) for pid in line.split()[1:]]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=10, message="the workers to exit")
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_growing_run_refreshes_the_statistics_of_its_results(ecm):
    """A run writes results faster than autovacuum analyses them; planned with the
    statistics of an empty table, every batch's "already handled?" lookup scanned the
    results so far. The run analyses them as it passes 1,000 organizations."""
    from sqlalchemy import text

    from ecm_service.service_layer import reconciliation as rec

    run = await rec.start_run(ecm.uow(), system="crm", mode="dry_run", user_id="it")
    orgs = [{"id": f"{i:06d}", "name": f"Компания {i}", "inn": None, "kpp": None, "ogrn": None} for i in range(1200)]
    for start in range(0, len(orgs), 500):
        await rec.reconcile_batch(ecm.uow(), run["id"], orgs[start:start + 500])
    async with ecm.uow() as uow:
        handled = await uow.session.scalar(select(func.count()).select_from(tables.reconciliation_results))
        if uow.session.get_bind().dialect.name == "postgresql":
            analysed = await uow.session.scalar(text(
                "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'reconciliation_results'"))
            assert analysed is not None
    assert handled == 1200


async def test_batches_of_one_run_at_the_same_moment_all_count_and_a_resent_one_changes_nothing(ecm):
    """Two drivers feeding one run at once (or a driver resending a batch whose answer it
    never got while the first is still being handled): every organization is handled
    once, each call answers, and the run's counts add up. Both used to read the run's
    counts before either wrote them (the later write lost the earlier's), and a batch
    resent at once broke the results' key: a 500."""
    import asyncio

    from ecm_service.service_layer import reconciliation as rec

    run = await rec.start_run(ecm.uow(), system="crm", mode="apply", user_id="it")
    orgs = [{"id": f"{i:06d}", "name": f"ООО «Параллель {i}»", "inn": None, "kpp": None, "ogrn": None}
            for i in range(40)]
    answers = await asyncio.gather(*(rec.reconcile_batch(ecm.uow(), run["id"], batch)
                                     for batch in (orgs[:20], orgs[20:], orgs[:20])))
    assert sorted(a["handled"] for a in answers) == [0, 20, 20] and sum(a["skipped"] for a in answers) == 20
    async with ecm.uow() as uow:
        stored = await rec.get_run(uow, run["id"])
        handled = await uow.session.scalar(select(func.count()).select_from(tables.reconciliation_results)
                                           .where(tables.reconciliation_results.c.run_id == run["id"]))
    assert (stored["done"], sum(stored["counts"].values()), handled) == (40, 40, 40)
    assert stored["cursor"] == "000039"


@pytest.mark.parametrize("mode", ["apply", "dry_run"])
async def test_an_organization_the_crm_merged_during_a_reconciliation_run_gets_no_reference(ecm, mode):
    """The driver read a page of CRM organizations; before it sent the batch, the CRM
    merged one of them away and the merge reached the registry. Before, an apply run
    placed a registry reference for the merged organization, which no merge would ever
    move. Now it is reported `merged_away`, with the survivor and the survivor's record,
    and nothing is placed for it; the batch's other organizations go on as before."""
    from ecm_service.service_layer import reconciliation as rec

    b, record_b = await _synced_ref(ecm, "ООО «Бета»")
    a, c = (ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(2))
    d = ExternalRef(system="crm", id=str(uuid.uuid4()))  # merged into an organization never synced
    await _merge_refs(ecm, a, b)
    merged_into_d = ExternalRef(system="crm", id=str(uuid.uuid4()))
    await _merge_refs(ecm, d, merged_into_d)
    run = await rec.start_run(ecm.uow(), system="crm", mode=mode, user_id="it")
    answer = await rec.reconcile_batch(ecm.uow(), run["id"], [
        {"id": ref.id, "name": name, "inn": None, "kpp": None, "ogrn": None}
        for ref, name in ((a, "ООО «Альфа»"), (c, "ООО «Гамма»"), (d, "ООО «Дельта»"))])
    states = {r["id"]: (r["state"], r["counterparty_id"]) for r in answer["results"]}
    assert states[a.id] == ("merged_away", record_b) and states[d.id] == ("merged_away", None)
    assert states[c.id][0] == "unlinked"
    async with ecm.uow() as uow:
        assert await uow.external_refs.find("counterparty", a) is None
        assert await uow.external_refs.find("counterparty", d) is None
        assert (await uow.external_refs.find("counterparty", c) is not None) == (mode == "apply")
        assert (await rec.state_counts(uow, run["id"]))["merged_away"] == 2
        report = await rec.report_rows(uow, run_id=run["id"], state="merged_away")
    assert {row["external_id"]: row["evidence"] for row in report} == {
        a.id: {"survivor_ref": b.as_text()}, d.id: {"survivor_ref": merged_into_d.as_text()}}


async def test_each_synced_event_of_a_batch_carries_its_own_history_entry_number(ecm):
    """The history is written at commit and the events' `registry_seq` filled in then:
    each counterparty_synced of a command group names its own entry, in order."""
    from ecm_service.service_layer.commands import apply_commands

    refs = [ExternalRef(system="crm", id=str(uuid.uuid4())) for _ in range(3)]
    messages = [parse_message(encode(new_envelope(
        type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="it", correlation_id="c",
        payload=ecm_commands.SyncCounterpartyV1(external_ref=ref, name=f"ООО «Сигма {i}»"))))
        for i, ref in enumerate(refs)]
    await apply_commands(ecm.uow(), messages, "it", {})
    async with ecm.session_factory() as session:
        bodies = (await session.execute(select(tables.outbox.c.body).where(
            tables.outbox.c.message_type == "ecm.counterparty_synced").order_by(tables.outbox.c.id))).scalars().all()
        entries = (await session.execute(select(tables.history.c.seq, tables.history.c.data).where(
            tables.history.c.action.like("sync_%")).order_by(tables.history.c.seq))).all()
    events = [json.loads(body)["payload"] for body in bodies]
    assert [e["source_ref"]["id"] for e in events] == [r.id for r in refs]
    assert [e["registry_seq"] for e in events] == [seq for seq, _ in entries]
    assert [data["source_ref"] for _, data in entries] == [f"crm:{r.id}" for r in refs]
    assert all(isinstance(e["registry_seq"], int) for e in events)


async def test_a_link_to_a_record_merged_at_that_moment_follows_it_to_the_survivor(ecm, monkeypatch):
    """An organization whose identifiers link it to a verified record, while the steward
    merges that record into another: the reference went onto the merged record (the
    merge had moved the references it could see), where nothing can ever verify it, and
    approvals for the organization waited for good. The merge lands once just before the
    link is placed and once just after (given a second); both times the reference ends
    on the survivor. A record archived just before gets no link."""
    from ecm_service.service_layer import registry
    from tests.support.identifiers import valid_ids

    place_new_ref = registry.place_new_ref

    async def one_round(merge_lands: str, action=steward.merge) -> tuple[str, bool, str]:
        target_ids = valid_ids()
        target_id, _ = await sync(ecm, "ООО «Цель»", **target_ids)
        survivor_id, _ = await sync(ecm, "ООО «Цель Плюс»", **valid_ids())
        for record_id in (target_id, survivor_id):
            await steward.verify(ecm.uow(), counterparty_id=record_id, user=STEWARD, reason="EGRUL",
                                 correlation_id="c")
        merges = []

        def merge():
            into = {"into_id": survivor_id} if action is steward.merge else {}
            merges.append(asyncio.ensure_future(action(
                ecm.uow(), counterparty_id=target_id, **into, user=STEWARD, reason="one company",
                correlation_id="c")))
            return asyncio.wait(merges, timeout=1.0)

        async def merge_meanwhile(*args, **kwargs):
            if merge_lands == "before":
                await merge()
            placed = await place_new_ref(*args, **kwargs)
            if merge_lands == "after":
                await merge()
            return placed

        monkeypatch.setattr(registry, "place_new_ref", merge_meanwhile)
        _, decision = await sync(ecm, "Цель", inn=target_ids["inn"], kpp=target_ids["kpp"])
        await asyncio.gather(*merges)
        monkeypatch.setattr(registry, "place_new_ref", place_new_ref)
        async with ecm.uow() as uow:
            linked_id = await uow.external_refs.find("counterparty", ExternalRef.parse(decision["source_ref"]))
            status = (await uow.counterparties.get(linked_id)).status
        return merge_lands, linked_id == survivor_id, status

    ends = [await one_round("before"), await one_round("after")]
    assert ends == [("before", True, "verified"), ("after", True, "verified")]
    # Archived (liquidated) just before the link is placed: a pending record of its own.
    assert await one_round("before", steward.archive) == ("before", False, "pending_verification")


async def test_a_decision_and_a_review_are_counted_once_when_their_transaction_runs_again(ecm, monkeypatch):
    """The match counters count committed answers: a sync whose transaction fails (the
    consumer retries its batch) and a steward's merge that loses a race and runs again
    (rerun_on_conflict) each count once."""
    from prometheus_client import REGISTRY
    from sqlalchemy.exc import IntegrityError

    from ecm_service.service_layer.unit_of_work import EcmUnitOfWork

    def count(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    real_commit, failures = EcmUnitOfWork.commit, []

    async def fails_once(self):
        if not failures:
            failures.append(1)
            raise IntegrityError("commit", {}, Exception("another transaction committed first"))
        await real_commit(self)

    sber_id, _ = await sync(ecm, "ПАО «Сбербанк России»", **SBER)
    await steward.verify(ecm.uow(), counterparty_id=sber_id, user=STEWARD, reason="EGRUL", correlation_id="c")

    proposals = count("ecm_match_decisions_total", outcome="propose", rule="similar_name")
    monkeypatch.setattr(EcmUnitOfWork, "commit", fails_once)
    ref = ExternalRef(system="crm", id=str(uuid.uuid4()))
    envelope = new_envelope(type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="it", correlation_id="c",
                            payload=ecm_commands.SyncCounterpartyV1(external_ref=ref, name="Sberbank Rossii PAO"))
    try:
        await apply_command(ecm.uow(), parse_message(encode(envelope)), "it", ecm.routes, ecm.document_types)
    except IntegrityError:
        pass
    assert failures and count("ecm_match_decisions_total", outcome="propose", rule="similar_name") == proposals
    await apply_command(ecm.uow(), parse_message(encode(envelope)), "it", ecm.routes, ecm.document_types)
    assert count("ecm_match_decisions_total", outcome="propose", rule="similar_name") == proposals + 1

    async with ecm.uow() as uow:
        latin_id = await uow.external_refs.find("counterparty", ref)
    confirmed = count("ecm_match_reviews_total", rule="similar_name", review="confirmed")
    failures.clear()
    await steward.merge(ecm.uow(), counterparty_id=latin_id, into_id=sber_id, user=STEWARD, reason="same bank",
                        correlation_id="c")
    assert failures  # the first attempt lost, the second committed
    assert count("ecm_match_reviews_total", rule="similar_name", review="confirmed") == confirmed + 1
