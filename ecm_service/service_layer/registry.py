"""Soft sync into the counterparty registry: always accepted, linked only when
identifiers agree with a verified record, otherwise kept pending for the steward."""

from __future__ import annotations

import asyncio
import heapq
import uuid
from collections import defaultdict
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone

import structlog
from prometheus_client import Counter
from stdnum.ru import inn as ru_inn

from ecm_service.domain import matching
from ecm_service.domain.counterparty import MERGED, PENDING, VERIFIED, Counterparty
from ecm_service.domain.identifiers import compact, passes
from ecm_service.domain.matching import Decision, Incoming, Known, decide, key_weight, pre_score, query_keys
from ecm_service.service_layer import bulk_matching
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from schemas import ecm_commands, ecm_events
from schemas.common import ExternalRef
from schemas.envelope import Envelope, new_envelope
from schemas.topics import ECM_EVENTS

log = structlog.get_logger()

COUNTERPARTY = "counterparty"
SOURCE = "ecm"
MATCH_DECISIONS = Counter("ecm_match_decisions_total", "Match-or-propose answers for synced organizations",
                          ["outcome", "rule"])


async def match_many(uow: EcmUnitOfWork, items: list[Incoming], *, prefetch: int | None = None) -> list[Decision]:
    """Match-or-propose for many organizations at once (a soft sync is a batch of one):
    candidates by identifier (INN, OGRN) and by shared name keys; the `prefetch` with
    the rarest shared keys are loaded, the `scored` of those closest by name (rapidfuzz)
    get their evidence, then the rules of `domain.matching` decide. Three indexed
    queries per batch, whatever its size."""
    limits = matching.THRESHOLDS
    keys = [query_keys(item.name) for item in items]
    postings = await uow.counterparties.name_postings(set().union(*keys))
    key_weights = {key: key_weight(key, len(ids)) for key, ids in postings.items() if ids}
    by_name: list[list[str]] = []
    for item_keys in keys:
        weights: dict[str, float] = {}
        get = weights.get
        for key in item_keys:
            weight = key_weights.get(key)
            if weight:
                for counterparty_id in postings[key]:
                    weights[counterparty_id] = get(counterparty_id, 0.0) + weight
        by_name.append(heapq.nlargest(prefetch or limits.prefetch, weights, key=get))
    inns = {i.inn for i in items if i.inn}
    ogrns = {i.ogrn for i in items if i.ogrn}
    records = await uow.counterparties.live_brief(ids=set().union(*by_name), inns=inns, ogrns=ogrns)
    by_id = {r.id: r for r in records}
    by_inn: dict[str, list[Known]] = defaultdict(list)
    by_ogrn: dict[str, list[Known]] = defaultdict(list)
    for known in by_id.values():  # only the identifiers asked for: most records came by name
        if known.inn in inns:
            by_inn[known.inn].append(known)
        if known.ogrn in ogrns:
            by_ogrn[known.ogrn].append(known)
    decisions = []
    for item, named in zip(items, by_name, strict=True):
        candidates = {k.id: k for k in by_inn.get(item.inn, []) + by_ogrn.get(item.ogrn, [])}
        named = [by_id[i] for i in named if i in by_id and i not in candidates]
        if len(named) > limits.scored:
            named = heapq.nlargest(limits.scored, named,
                                   key=lambda k: pre_score(item.name, k.name, b_form=k.match_name))
        candidates.update((k.id, k) for k in named)
        decisions.append(decide(item, list(candidates.values())))
    return decisions


async def match_in_parallel(uow: EcmUnitOfWork, items: list[Incoming], *, parts: int = 2) -> list[Decision]:
    """`match_many` for a bulk run (`Thresholds.bulk_prefetch` candidates per name): on
    the worker processes of `bulk_matching` when the service has them, otherwise over
    `parts` slices at once, each on its own connection, so that one slice is scored in
    Python while the database answers another (read only)."""
    prefetch = matching.THRESHOLDS.bulk_prefetch
    workers = bulk_matching.configured()
    if workers is not None and items:
        try:
            return await workers.match(items, prefetch=prefetch)
        except BrokenProcessPool:  # a worker was killed: this batch here, new workers next time
            log.warning("match_workers_broken", items=len(items))

    async def part(chunk: list[Incoming]) -> list[Decision]:
        async with uow.fork() as reader:
            return await match_many(reader, chunk, prefetch=prefetch)

    done = await asyncio.gather(*(part(chunk) for chunk in bulk_matching.slices(items, parts)))
    return [decision for chunk in done for decision in chunk]


def incoming(*, name: str, inn: str | None, kpp: str | None, ogrn: str | None) -> Incoming:
    return Incoming(name=name, inn=inn, kpp=kpp, ogrn=ogrn, inn_valid=bool(inn) and passes(ru_inn, inn))


async def match_or_propose(uow: EcmUnitOfWork, *, name: str, inn: str | None, kpp: str | None,
                           ogrn: str | None, ref: ExternalRef | None = None) -> Decision:
    """With `ref`, the answer `prefetch_matches` worked out for the batch, while it holds."""
    item = incoming(name=name, inn=inn, kpp=kpp, ogrn=ogrn)
    if ref is not None and (decision := uow.match_hints.take(_ref_key(ref), item)) is not None:
        return decision
    return (await match_many(uow, [item]))[0]


def _ref_key(ref: ExternalRef) -> tuple[str, str]:
    return (ref.system, ref.id)


def _sync_ids(cmd: ecm_commands.SyncCounterpartyV1) -> dict:
    return dict(inn=compact(cmd.inn), kpp=compact(cmd.kpp), ogrn=compact(cmd.ogrn))


async def prefetch_matches(uow: EcmUnitOfWork, commands: list[ecm_commands.SyncCounterpartyV1]) -> None:
    """Match-or-propose for the organizations of a batch of syncs that the registry has
    not seen, in one `match_many` (its queries once for the batch). `sync_counterparty`
    takes each answer while it holds (`matching.BatchDecisions`). Call after the
    batch's references are prefetched."""
    fresh: dict[tuple[str, str], Incoming] = {}
    for cmd in commands:
        key = _ref_key(cmd.external_ref)
        if key not in fresh and await uow.external_refs.find(COUNTERPARTY, cmd.external_ref) is None:
            fresh[key] = incoming(name=cmd.name, **_sync_ids(cmd))
    if len(fresh) < 2:  # one organization asks for itself
        return
    for key, item, decision in zip(fresh, fresh.values(), await match_many(uow, list(fresh.values())),
                                   strict=True):
        uow.match_hints.offer(key, item, decision)
    uow.match_hints.generic(uow.counterparties.generic_keys(set().union(*(query_keys(i.name) for i in fresh.values()))))


async def link_target(uow: EcmUnitOfWork, linked_id: str) -> Counterparty | None:
    """The verified record a link goes onto, read `FOR KEY SHARE`, so that a steward's
    merge or archive of it at this moment either waits for this transaction (and then
    moves the new reference with the others) or is waited for and seen here: a record
    merged meanwhile is followed to its survivor, and one no longer verified for another
    reason (archived) gets no link. Before, the reference went onto a merged record,
    where nothing could verify it, and the organization's approvals waited for good."""
    seen: set[str] = set()
    while linked_id not in seen:
        seen.add(linked_id)
        record = await uow.counterparties.get_key_shared(linked_id)
        if record is None or record.status != MERGED or not record.merged_into:
            return record if record is not None and record.status == VERIFIED else None
        linked_id = record.merged_into
    return None


async def place_new_ref(uow: EcmUnitOfWork, ref: ExternalRef, *, decision: Decision, name: str, ids: dict,
                        now: datetime, **fields) -> tuple[Counterparty, str]:
    """A reference the registry has not seen goes where match-or-propose says: onto the
    linked verified record ("linked"; `link_target`), or onto a new pending record
    ("created"). The decision and its evidence are kept for the steward."""
    record = await link_target(uow, decision.linked_id) if decision.outcome == "link" else None
    outcome = "linked"
    if record is None:
        outcome = "created"
        record = Counterparty(id=str(uuid.uuid4()), name=name, status=PENDING, created_at=now, updated_at=now,
                              **fields, **ids)
        record.refresh_derived()
        await uow.counterparties.add(record)
        uow.match_hints.written(record.name, record.inn, record.ogrn)
    await uow.external_refs.attach(COUNTERPARTY, record.id, ref)
    await uow.counterparties.add_match_decision(
        id=str(uuid.uuid4()), counterparty_id=record.id, source_ref=ref.as_text(), outcome=decision.outcome,
        rule=decision.rule, candidates=decision.candidates, created_at=now)
    uow.after_commit(MATCH_DECISIONS.labels(decision.outcome, decision.rule).inc)
    return record, outcome


async def announce_synced(uow: EcmUnitOfWork, record: Counterparty, *, outcome: str, source_ref: ExternalRef,
                          seq: int | None, correlation_id: str, causation_id=None) -> Envelope:
    """Tells the referring system which registry record its organization is now. Returns
    the event's envelope (its `registry_seq` may be filled in before the commit)."""
    event = ecm_events.CounterpartySyncedV1(
        counterparty_id=record.id, status=record.status, outcome=outcome, legal_name=record.name, inn=record.inn,
        kpp=record.kpp, ogrn=record.ogrn, source_ref=source_ref, registry_seq=seq)
    envelope = new_envelope(type=ecm_events.COUNTERPARTY_SYNCED, schema_version=1, source=SOURCE, payload=event,
                            correlation_id=correlation_id, causation_id=causation_id)
    await uow.publish(ECM_EVENTS, record.id, envelope)
    return envelope


async def sync_counterparty(uow: EcmUnitOfWork, cmd: ecm_commands.SyncCounterpartyV1, envelope: Envelope) -> dict:
    """The organization's reference and its data into the registry. A reference the
    registry remembers as merged away (the sync was dead-lettered and is replayed after
    the CRM's merge, say) is read as the organization the merge left: its sync changes
    nothing when that one has a reference already (its own syncs carry the merged data),
    and otherwise places the reference for it, as the merge would have moved the merged
    one's. Before, such a sync made a reference for the merged organization, which no
    merge would ever move."""
    now = datetime.now(timezone.utc)
    ids = _sync_ids(cmd)
    country = (cmd.country or "RU").upper()
    ref, named = cmd.external_ref, {}
    existing_id = await uow.external_refs.find(COUNTERPARTY, ref)
    if existing_id is None and (survivor := await uow.external_refs.survivor_of(COUNTERPARTY, ref)) is not None:
        ref, named = survivor, {"named_ref": ref.as_text()}
        if (existing_id := await uow.external_refs.find(COUNTERPARTY, ref)) is not None:
            return {"counterparty_id": existing_id, "outcome": "merged_away", "survivor_ref": ref.as_text(),
                    **named}
    if existing_id:
        record = await uow.counterparties.get(existing_id, for_update=True)
        outcome = "updated"
        if record.status == PENDING:  # a verified record is master data: sync never overwrites it
            uow.match_hints.written(record.name, record.inn, record.ogrn)  # as it was, and as it will be:
            record.name, record.legal_form, record.country = cmd.name, cmd.legal_form, country
            record.inn, record.kpp, record.ogrn = ids["inn"], ids["kpp"], ids["ogrn"]
            record.addresses = [a.model_dump() for a in cmd.addresses]
            record.refresh_derived()
            record.updated_at = now
            await uow.counterparties.save(record)
            uow.match_hints.written(record.name, record.inn, record.ogrn)
    else:
        decision = await match_or_propose(uow, name=cmd.name, **ids, ref=cmd.external_ref)
        record, outcome = await place_new_ref(
            uow, ref, decision=decision, name=cmd.name, ids=ids, now=now, legal_form=cmd.legal_form,
            country=country, addresses=[a.model_dump() for a in cmd.addresses])
    synced = await announce_synced(uow, record, outcome=outcome, source_ref=ref, seq=None,
                                   correlation_id=envelope.correlation_id, causation_id=envelope.event_id)
    # The entry is written at commit; its number goes into the event then (the outbox
    # row is encoded after the history is written).
    await uow.history.append(
        entity_type=COUNTERPARTY, entity_id=record.id, action=f"sync_{outcome}",
        actor=f"{ref.system}:sync",
        data={"source_ref": ref.as_text(), "quality_flags": record.quality_flags, **named},
        then=lambda seq: synced.payload.__setitem__("registry_seq", seq))
    return {"counterparty_id": record.id, "outcome": outcome, **named}


async def merge_external_refs(uow: EcmUnitOfWork, cmd: ecm_commands.MergeExternalRefsV1, envelope: Envelope) -> dict:
    """Two CRM organizations became one. The merged one's reference follows the survivor:
    renamed when the survivor had no registry record, dropped when both point at the same
    record, kept when they point at different records (the pair then waits for the
    steward: `steward.merges_held_apart`). Approvals started for the merged organization
    now name the survivor.

    Each merge is remembered (`external_ref_merges`). The merges of a chain (A into B,
    then B into C) are keyed by their merged organizations, so after a backlog they can
    arrive in either order: a merge into a survivor merged away already goes on to the
    last one (before, A's reference went to B and stayed there). Merges read under the
    history chain's lock, so two of a chain applied at the same moment (on two replicas)
    also end there."""
    await uow.history.hold()
    survivor_ref = await uow.external_refs.last_survivor(COUNTERPARTY, cmd.survivor_ref, short_of=cmd.merged_ref)
    await uow.external_refs.record_merge(COUNTERPARTY, cmd.merged_ref, survivor_ref, at=cmd.merged_at)
    merged_id = await uow.external_refs.find(COUNTERPARTY, cmd.merged_ref)
    survivor_id = await uow.external_refs.find(COUNTERPARTY, survivor_ref)
    moved = await uow.approvals.rename_counterparty_ref(cmd.merged_ref.as_text(), survivor_ref.as_text())
    if merged_id is None:
        return {"outcome": "nothing_to_move", "approvals": moved}
    if survivor_id is None:
        await uow.external_refs.rename(COUNTERPARTY, cmd.merged_ref, survivor_ref)
        outcome = "ref_moved"
    elif survivor_id == merged_id:
        await uow.external_refs.detach(COUNTERPARTY, cmd.merged_ref)
        outcome = "ref_dropped"
    else:
        outcome = "conflict"
    data = {"merged_ref": cmd.merged_ref.as_text(), "survivor_ref": survivor_ref.as_text(), "outcome": outcome}
    if survivor_ref != cmd.survivor_ref:  # the survivor the CRM named was merged away since
        data["named_survivor_ref"] = cmd.survivor_ref.as_text()
    seq = await uow.history.append_now(entity_type=COUNTERPARTY, entity_id=merged_id, action="external_refs_merged",
                                       actor=f"{cmd.survivor_ref.system}:merge", at=cmd.merged_at, data=data)
    if outcome == "conflict":
        await uow.history.append(entity_type=COUNTERPARTY, entity_id=survivor_id, action="external_refs_merged",
                                 actor=f"{cmd.survivor_ref.system}:merge", at=cmd.merged_at, data=data)
    if outcome == "ref_moved":  # the survivor learns which record it is now linked to
        record = await uow.counterparties.get(merged_id)
        await announce_synced(uow, record, outcome="linked" if record.status == "verified" else "updated",
                              source_ref=survivor_ref, seq=seq, correlation_id=envelope.correlation_id,
                              causation_id=envelope.event_id)
    return {"outcome": outcome, "approvals": moved}
