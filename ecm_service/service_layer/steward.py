"""The data steward's actions on the registry. Each is recorded in the hash-chained
history with who, when and why, and announced through the outbox."""

from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client import Counter
from sqlalchemy import select, update

from ecm_service.adapters import tables
from ecm_service.domain.counterparty import VERIFIED, Counterparty, StewardRuleBroken
from ecm_service.service_layer.approvals import resume_waiting
from ecm_service.service_layer.registry import COUNTERPARTY, SOURCE
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra.retrying import rerun_on_conflict
from schemas import ecm_events
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.topics import ECM_EVENTS


class NotFound(Exception):
    pass


MATCH_REVIEWS = Counter("ecm_match_reviews_total", "Steward decisions on match-or-propose answers",
                        ["rule", "review"])


async def _review(uow: EcmUnitOfWork, counterparty_id: str, action: str, other_id: str | None = None) -> None:
    """Quality telemetry: did the steward confirm or overturn what matching answered for
    this record? A merge into a proposed candidate confirms a proposal (and overturns a
    `new`); verifying it as a company of its own or declaring it distinct from the
    candidate overturns a proposal (and confirms a `new`)."""
    m = tables.match_decisions
    rows = (await uow.session.execute(select(m).where(m.c.counterparty_id == counterparty_id,
                                                      m.c.review.is_(None)))).mappings().all()
    now = datetime.now(timezone.utc)
    for row in rows:
        proposed = {c["counterparty_id"] for c in row["candidates"]} if row["outcome"] == "propose" else set()
        if row["outcome"] == "link":
            continue
        if action == "merge":
            review = "confirmed" if other_id in proposed else "overturned"
        elif action in ("verify", "not_duplicate"):
            if action == "not_duplicate" and other_id not in proposed:
                continue
            review = "overturned" if proposed else "confirmed"
        else:
            continue
        await uow.session.execute(update(m).where(m.c.id == row["id"]).values(
            review=review, review_action=action, reviewed_at=now))
        uow.after_commit(MATCH_REVIEWS.labels(row["rule"], review).inc)


def _actor(user) -> str:
    return f"user:{user.id}"


async def _load(uow: EcmUnitOfWork, counterparty_id: str) -> Counterparty:
    record = await uow.counterparties.get(counterparty_id, for_update=True)
    if record is None:
        raise NotFound(f"counterparty {counterparty_id} not found")
    return record


async def _announce(uow: EcmUnitOfWork, record: Counterparty, change: str, *, reason: str | None,
                    correlation_id: str, seq: int, shown: Counterparty | None = None) -> None:
    shown = shown or record
    event = ecm_events.CounterpartyChangedV1(
        counterparty_id=record.id, change=change, status=record.status, registry_id=shown.id,
        registry_status=shown.status, legal_name=shown.name, inn=shown.inn, kpp=shown.kpp, ogrn=shown.ogrn,
        external_refs=await uow.external_refs.refs_of(COUNTERPARTY, shown.id), reason=reason, registry_seq=seq,
    )
    await uow.publish(ECM_EVENTS, shown.id, new_envelope(
        type=ecm_events.COUNTERPARTY_CHANGED, schema_version=1, source=SOURCE, payload=event,
        correlation_id=correlation_id))


@rerun_on_conflict
async def _change_status(uow: EcmUnitOfWork, *, counterparty_id: str, user, reason: str | None,
                         correlation_id: str, change: str) -> Counterparty:
    async with uow:
        record = await _load(uow, counterparty_id)
        action = {"verified": "verify", "rejected": "reject", "archived": "archive"}[change]
        getattr(record, action)(datetime.now(timezone.utc))
        waiting = await uow.approvals.lock_awaiting_counterparty([record.id]) if record.status == VERIFIED else []
        await uow.counterparties.save(record)
        seq = await uow.history.append_now(entity_type=COUNTERPARTY, entity_id=record.id, action=change,
                                           actor=_actor(user), reason=reason, data={"status": record.status})
        await _announce(uow, record, change, reason=reason, correlation_id=correlation_id, seq=seq)
        if record.status == VERIFIED:
            await resume_waiting(uow, waiting, actor=_actor(user))
            await _review(uow, record.id, "verify")
        await uow.commit()
    return record


async def verify(uow: EcmUnitOfWork, *, counterparty_id: str, user, reason: str | None, correlation_id: str):
    return await _change_status(uow, counterparty_id=counterparty_id, user=user, reason=reason,
                                correlation_id=correlation_id, change="verified")


async def reject(uow: EcmUnitOfWork, *, counterparty_id: str, user, reason: str, correlation_id: str):
    return await _change_status(uow, counterparty_id=counterparty_id, user=user, reason=reason,
                                correlation_id=correlation_id, change="rejected")


async def archive(uow: EcmUnitOfWork, *, counterparty_id: str, user, reason: str, correlation_id: str):
    return await _change_status(uow, counterparty_id=counterparty_id, user=user, reason=reason,
                                correlation_id=correlation_id, change="archived")


@rerun_on_conflict
async def merge(uow: EcmUnitOfWork, *, counterparty_id: str, into_id: str, user, reason: str,
                correlation_id: str):
    """The duplicate's external refs and approvals move to the survivor."""
    async with uow:
        first, second = sorted((counterparty_id, into_id))  # lock in one order: no deadlock between merges
        locked = {cid: await _load(uow, cid) for cid in (first, second)}
        record, survivor = locked[counterparty_id], locked[into_id]
        now = datetime.now(timezone.utc)
        record.merge_into(survivor, now)
        # The duplicate's waiting approvals become the survivor's (see resume_waiting).
        waiting = (await uow.approvals.lock_awaiting_counterparty([record.id, survivor.id])
                   if survivor.status == VERIFIED else [])
        moved = [ref.as_text() for ref in await uow.external_refs.refs_of(COUNTERPARTY, record.id)]
        await uow.external_refs.move_all(COUNTERPARTY, record.id, survivor.id)
        await uow.approvals.move_counterparty(record.id, survivor.id)
        await uow.counterparties.save(record)
        await uow.history.append(entity_type=COUNTERPARTY, entity_id=record.id, action="merged", actor=_actor(user),
                                 reason=reason, data={"survivor": survivor.id, "moved_refs": moved})
        seq = await uow.history.append_now(entity_type=COUNTERPARTY, entity_id=survivor.id, action="absorbed",
                                           actor=_actor(user), reason=reason,
                                           data={"merged": record.id, "moved_refs": moved})
        await _announce(uow, record, "merged", reason=reason, correlation_id=correlation_id, seq=seq, shown=survivor)
        if survivor.status == VERIFIED:
            await resume_waiting(uow, waiting, actor=_actor(user))
        await _review(uow, record.id, "merge", survivor.id)
        await uow.commit()
    return record, survivor


async def candidates_for(uow: EcmUnitOfWork, record: Counterparty, limit: int = 5) -> list[dict]:
    """Records a pending one may duplicate, for the steward to compare side by side, with
    the evidence: what match-or-propose found (score, agreeing and differing ids, rules),
    or else the same INN or name core; minus pairs already declared distinct."""
    distinct = set(await uow.counterparties.not_duplicates_of(record.id))
    shown: list[dict] = []
    for decision in await uow.counterparties.match_decisions_of([record.id]):
        for evidence in decision["candidates"]:
            other = await uow.counterparties.get(evidence["counterparty_id"])
            if other and other.id != record.id and other.id not in distinct and other.status in (
                    VERIFIED, "pending_verification") and all(s["record"].id != other.id for s in shown):
                shown.append({"record": other, "evidence": evidence})
    if not shown:
        found = await uow.counterparties.similar(inn=record.inn, normalized_name=record.normalized_name,
                                                 exclude=[record.id, *distinct], limit=limit)
        shown = [{"record": c, "evidence": None}
                 for c in sorted(found, key=lambda c: (c.status != VERIFIED, c.inn != record.inn, c.name))]
    return shown[:limit]


async def merges_held_apart(uow: EcmUnitOfWork, limit: int = 100) -> list[dict]:
    """Organizations another system merged (a CRM merge) whose registry records are still
    two: the merged organization's reference stayed on its record because the survivor's
    is on another one (`registry.merge_external_refs`'s "conflict"). The steward merges
    one record into the other (the references then share one, and the pair leaves this
    list) or declares them distinct (then it leaves it too: the other system's merge
    was wrong, or the two are branches). Oldest first, with both records.

    Read for all remembered merges together, in a handful of statements whatever their
    number: the pairs declared distinct stay among them for good (their references stay
    too), and before, each cost about four statements on every load of the steward's page."""
    refs = uow.external_refs
    rows = await refs.merges_still_attached(COUNTERPARTY)
    merged = [ExternalRef(system=row["system"], id=row["merged_id"]) for row in rows]
    named = [ExternalRef(system=row["system"], id=row["survivor_id"]) for row in rows]
    survivors = await refs.last_survivors(COUNTERPARTY, list(zip(named, merged, strict=True)))
    await refs.prefetch(COUNTERPARTY, survivors)  # `find` answers them from memory
    pairs = []
    for row, merged_ref, survivor in zip(rows, merged, survivors, strict=True):
        survivor_id = await refs.find(COUNTERPARTY, survivor)
        if survivor_id is not None and survivor_id != row["entity_id"]:
            pairs.append((row, merged_ref, survivor, survivor_id))
    distinct = await uow.counterparties.not_duplicate_pairs(sorted({pair[0]["entity_id"] for pair in pairs}))
    pairs = [pair for pair in pairs if tuple(sorted((pair[0]["entity_id"], pair[3]))) not in distinct][:limit]
    records = await uow.counterparties.get_many(sorted({i for row, _, _, survivor_id in pairs
                                                        for i in (row["entity_id"], survivor_id)}))
    return [{"merged_ref": merged_ref.as_text(), "survivor_ref": survivor.as_text(), "merged_at": row["merged_at"],
             "record": records[row["entity_id"]], "survivor_record": records[survivor_id]}
            for row, merged_ref, survivor, survivor_id in pairs]


@rerun_on_conflict
async def mark_not_duplicate(uow: EcmUnitOfWork, *, counterparty_id: str, other_id: str, user, reason: str) -> bool:
    if counterparty_id == other_id:
        raise StewardRuleBroken("a record is trivially not a duplicate of itself")
    async with uow:
        for cid in (counterparty_id, other_id):
            await _load(uow, cid)
        created = await uow.counterparties.mark_not_duplicates(
            counterparty_id, other_id, by=user.id, reason=reason, at=datetime.now(timezone.utc))
        if created:
            for this, that in ((counterparty_id, other_id), (other_id, counterparty_id)):
                await uow.history.append(entity_type=COUNTERPARTY, entity_id=this, action="not_duplicate",
                                         actor=_actor(user), reason=reason, data={"other": that})
                await _review(uow, this, "not_duplicate", that)
        await uow.commit()
    return created


@rerun_on_conflict
async def edit(uow: EcmUnitOfWork, *, counterparty_id: str, changes: dict, user, reason: str, correlation_id: str):
    async with uow:
        record = await _load(uow, counterparty_id)
        diff = record.edit(changes, datetime.now(timezone.utc))
        if diff:
            await uow.counterparties.save(record)
            seq = await uow.history.append_now(entity_type=COUNTERPARTY, entity_id=record.id, action="edited",
                                               actor=_actor(user), reason=reason, data={"changes": diff})
            await _announce(uow, record, "edited", reason=reason, correlation_id=correlation_id, seq=seq)
        await uow.commit()
    return record, diff
