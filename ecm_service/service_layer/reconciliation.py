"""Initial sync and the auditors' report: another system's organizations (the CRM's),
sent in batches by a driver, are reconciled against the registry — in a dry run by
default (nothing written to the registry), or writing links and pending records. Each
organization ends in one state, with its evidence:

- `linked` — its reference is attached to a verified counterparty (or would be: link);
- `proposed` — it looks like existing records (a pending record with candidates);
- `unlinked` — nothing in the registry yet (or a pending record of its own);
- `conflict` — linked, but an identifier the registry owns differs (INN, KPP, OGRN);
- `duplicate` — several organizations linked to one counterparty;
- `stale` — changed in the other system after it was last synced.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timezone

from sqlalchemy import func, select, update

from ecm_service.adapters import tables
from ecm_service.domain.counterparty import VERIFIED, Counterparty
from ecm_service.domain.identifiers import compact
from ecm_service.domain.matching import Decision
from ecm_service.service_layer.registry import (
    COUNTERPARTY,
    announce_synced,
    incoming,
    match_in_parallel,
    match_many,
    place_new_ref,
)
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra.db import analyze
from infra.retrying import rerun_on_conflict
from infra.spreadsheets import inert_row, text_cells
from schemas.common import ExternalRef

STATES = ("linked", "proposed", "unlinked", "conflict", "duplicate", "stale", "merged_away")
REPORT_COLUMNS = ["crm_organization_id", "state", "counterparty_id", "score", "evidence", "name", "inn", "kpp",
                  "ogrn", "run_id"]


class RunClosed(Exception):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def start_run(uow: EcmUnitOfWork, *, system: str, mode: str, user_id: str) -> dict:
    run = dict(id=str(uuid.uuid4()), system=system, mode=mode, status="running", started_by=user_id,
               started_at=_now(), done=0, counts={})
    async with uow:
        await uow.session.execute(tables.reconciliation_runs.insert().values(**run))
        await uow.history.append(entity_type="reconciliation", entity_id=run["id"], action="started",
                                 actor=f"user:{user_id}", data={"system": system, "mode": mode})
        await uow.commit()
    return run


async def get_run(uow: EcmUnitOfWork, run_id: str, *, for_update: bool = False) -> dict | None:
    t = tables.reconciliation_runs
    query = select(t).where(t.c.id == run_id)
    row = (await uow.session.execute(query.with_for_update() if for_update else query)).mappings().first()
    return dict(row) if row else None


async def latest_run(uow: EcmUnitOfWork) -> dict | None:
    t = tables.reconciliation_runs
    row = (await uow.session.execute(select(t).order_by(t.c.started_at.desc()).limit(1))).mappings().first()
    return dict(row) if row else None


def _differences(org: dict, record: Counterparty) -> list[str]:
    return [key for key in ("inn", "kpp", "ogrn") if org.get(key) and getattr(record, key)
            and compact(org[key]) != getattr(record, key)]


async def _linked_state(uow: EcmUnitOfWork, ref: ExternalRef, org: dict, snapshot: dict, linked_id: str,
                        linked_at: datetime | None) -> dict:
    """An organization the registry already knows: linked, proposed, unlinked, or a
    conflict or stale link."""
    record = await uow.counterparties.get(linked_id)
    differ = _differences(org, record) if record.status == VERIFIED else []
    decisions = await uow.counterparties.match_decisions_of([record.id])
    mine = [d for d in decisions if d["source_ref"] == ref.as_text()]
    if differ:
        state = "conflict"
    elif org.get("updated_at") and linked_at and datetime.fromisoformat(org["updated_at"]) > linked_at:
        state = "stale"
    elif record.status == VERIFIED:
        state = "linked"
    elif mine and mine[0]["outcome"] == "propose":
        state = "proposed"
    else:
        state = "unlinked"
    candidates = mine[0]["candidates"] if mine and state == "proposed" else []
    return {"state": state, "counterparty_id": candidates[0]["counterparty_id"] if candidates else record.id,
            "score": candidates[0]["score"] if candidates else None, "snapshot": snapshot,
            "evidence": {"registry_status": record.status, "differ": differ, "candidates": candidates,
                         "linked_at": linked_at.isoformat() if linked_at else None}}


async def _decided_state(uow: EcmUnitOfWork, run: dict, ref: ExternalRef, org: dict, ids: dict, snapshot: dict,
                         decision: Decision) -> dict:
    """An organization the registry has not seen: what match-or-propose says (written
    in an apply run)."""
    top = decision.candidates[0] if decision.candidates else None
    state = {"link": "linked", "propose": "proposed", "new": "unlinked"}[decision.outcome]
    if state == "linked" and top["differ"]:  # the linked record's evidence comes first
        state = "conflict"
    counterparty_id = decision.linked_id or (top["counterparty_id"] if top else None)
    if run["mode"] == "apply":
        record, outcome = await place_new_ref(uow, ref, decision=decision, name=org["name"], ids=ids, now=_now(),
                                              country="RU")
        placed = decision.outcome
        if decision.outcome == "link" and record.id != decision.linked_id:  # merged or archived meanwhile
            state, counterparty_id = ("linked" if outcome == "linked" else "unlinked"), record.id
            placed = "link" if outcome == "linked" else "new"
        seq = await uow.history.append_now(entity_type=COUNTERPARTY, entity_id=record.id,
                                           action=f"reconciled_{placed}",
                                           actor=f"reconciliation:{run['id']}",
                                           data={"source_ref": ref.as_text()})
        # The other system learns the link (or the pending record) as after a soft sync.
        await announce_synced(uow, record, outcome=outcome, source_ref=ref, seq=seq,
                              correlation_id=f"reconciliation-{run['id']}")
    return {"state": state, "counterparty_id": counterparty_id,
            "score": top["score"] if top else None, "snapshot": snapshot,
            "evidence": {"decision": decision.outcome, "rule": decision.rule, "candidates": decision.candidates}}


@rerun_on_conflict
async def reconcile_batch(uow: EcmUnitOfWork, run_id: str, organizations: list[dict]) -> dict:
    """One batch, one transaction, matched together (`registry.match_many`).
    Organizations already handled by this run are skipped, so a driver that resends a
    batch after a crash changes nothing. Batches of one run at once (two drivers, or a
    resend while the first is still being handled) are matched side by side; the run's
    counts are added to under its row lock, at the end, and a batch whose organization
    the other handled first breaks a key and runs again, skipping it."""
    async with uow:
        run = await get_run(uow, run_id)
        if run is None:
            raise LookupError(f"reconciliation run {run_id} not found")
        if run["status"] != "running":
            raise RunClosed(f"reconciliation run {run_id} is {run['status']}")
        r = tables.reconciliation_results
        seen = set((await uow.session.execute(select(r.c.external_id).where(
            r.c.run_id == run_id, r.c.external_id.in_([o["id"] for o in organizations])))).scalars())
        todo = list({o["id"]: o for o in organizations if o["id"] not in seen}.values())
        known = await uow.external_refs.find_many(COUNTERPARTY, run["system"], [o["id"] for o in todo])
        # Organizations the other system merged away after the driver read their page,
        # the merge reaching the registry first: no reference is placed for them (no
        # merge would ever move it); the survivor's own row says where it stands.
        unknown = [o["id"] for o in todo if o["id"] not in known]
        survivors = await uow.external_refs.survivors_of(
            COUNTERPARTY, [ExternalRef(system=run["system"], id=i) for i in unknown])
        merged_away = {i: survivor for i, survivor in zip(unknown, survivors, strict=True) if survivor is not None}
        await uow.external_refs.prefetch(COUNTERPARTY, merged_away.values())  # `find` below answers from memory
        ids = {o["id"]: {k: compact(o.get(k)) for k in ("inn", "kpp", "ogrn")} for o in todo}
        # A dry run matches the batch at once; an apply run one by one, so that each
        # organization also meets the pending records written for the ones before it.
        fresh = [o for o in todo if o["id"] not in known and o["id"] not in merged_away and run["mode"] != "apply"]
        decisions = dict(zip([o["id"] for o in fresh], await match_in_parallel(
            uow, [incoming(name=o["name"], **ids[o["id"]]) for o in fresh]), strict=True))
        added: dict[str, int] = {}
        rows, results = [], []
        for org in todo:
            ref = ExternalRef(system=run["system"], id=org["id"])
            snapshot = {"name": org["name"], **ids[org["id"]], "updated_at": org.get("updated_at")}
            if org["id"] in known:
                result = await _linked_state(uow, ref, org, snapshot, *known[org["id"]])
            elif org["id"] in merged_away:
                survivor = merged_away[org["id"]]
                survivor_id = await uow.external_refs.find(COUNTERPARTY, survivor)
                result = {"state": "merged_away", "counterparty_id": survivor_id, "score": None, "snapshot": snapshot,
                          "evidence": {"survivor_ref": survivor.as_text()}}
            else:
                decision = decisions.get(org["id"]) or (await match_many(
                    uow, [incoming(name=org["name"], **ids[org["id"]])]))[0]
                result = await _decided_state(uow, run, ref, org, ids[org["id"]], snapshot, decision)
            rows.append({"run_id": run_id, "external_id": org["id"], **result})
            added[result["state"]] = added.get(result["state"], 0) + 1
            results.append({"id": org["id"], "state": result["state"], "counterparty_id": result["counterparty_id"]})
        if rows:
            await uow.session.execute(r.insert(), rows)
        run = await get_run(uow, run_id, for_update=True)  # as other batches of the run have left it
        if run["status"] != "running":
            raise RunClosed(f"reconciliation run {run_id} is {run['status']}")
        counts = dict(run["counts"])
        for state, n in added.items():
            counts[state] = counts.get(state, 0) + n
        cursor = max([o["id"] for o in organizations] + ([run["cursor"]] if run["cursor"] else []))
        await uow.session.execute(update(tables.reconciliation_runs).where(tables.reconciliation_runs.c.id == run_id)
                                  .values(done=run["done"] + len(results), counts=counts, cursor=cursor))
        await uow.commit()
    if statistics_due(run["done"], run["done"] + len(results)):
        await _refresh_statistics(uow.fork(), apply=run["mode"] == "apply")
    return {"handled": len(results), "skipped": len(organizations) - len(results), "cursor": cursor,
            "results": results}


def statistics_due(done_before: int, done_after: int, first: int = 1000) -> bool:
    """True when a run's count passes 1,000, 2,000, 4,000, ... organizations."""
    step = first
    while step <= done_after:
        if done_before < step:
            return True
        step *= 2
    return False


async def _refresh_statistics(uow: EcmUnitOfWork, *, apply: bool) -> None:
    """The tables a run grows, analysed while it grows. A run writes 100,000 result rows in
    a minute, faster than autovacuum looks; with the statistics of an empty table
    PostgreSQL scans the results for every batch's "already handled?" lookup, and a
    100,000 sync took 272 s instead of 66 (bench/RESULTS.md)."""
    async with uow:
        grown = ("reconciliation_results", "external_refs", "counterparties") if apply else ("reconciliation_results",)
        await analyze(uow.session, *grown)
        await uow.commit()


async def finish_run(uow: EcmUnitOfWork, run_id: str, user_id: str) -> dict:
    """Marks duplicates (several organizations linked to one counterparty) and closes the run."""
    async with uow:
        run = await get_run(uow, run_id)
        if run is None:
            raise LookupError(f"reconciliation run {run_id} not found")
        r = tables.reconciliation_results
        shared = select(r.c.counterparty_id).where(r.c.run_id == run_id, r.c.state.in_(("linked", "duplicate"))) \
            .group_by(r.c.counterparty_id).having(func.count() > 1)
        await uow.session.execute(update(r).where(r.c.run_id == run_id, r.c.state == "linked",
                                                  r.c.counterparty_id.in_(shared)).values(state="duplicate"))
        counts = dict((await uow.session.execute(select(r.c.state, func.count()).where(r.c.run_id == run_id)
                                                 .group_by(r.c.state))).all())
        await uow.session.execute(update(tables.reconciliation_runs).where(tables.reconciliation_runs.c.id == run_id)
                                  .values(status="done", finished_at=_now(), counts=counts))
        await uow.history.append(entity_type="reconciliation", entity_id=run_id, action="finished",
                                 actor=f"user:{user_id}", data={"counts": counts})
        await uow.commit()
        return await get_run(uow, run_id)


async def report_rows(uow: EcmUnitOfWork, run_id: str, *, state: str | None = None, limit: int | None = None,
                      offset: int = 0) -> list[dict]:
    r = tables.reconciliation_results
    query = select(r).where(r.c.run_id == run_id).order_by(r.c.external_id).offset(offset)
    if state:
        query = query.where(r.c.state == state)
    if limit:
        query = query.limit(limit)
    return [dict(row) for row in (await uow.session.execute(query)).mappings()]


def csv_row(row: dict) -> list:
    import json

    snap = row["snapshot"]
    return [row["external_id"], row["state"], row["counterparty_id"] or "", "" if row["score"] is None
            else row["score"], json.dumps(row["evidence"], ensure_ascii=False, sort_keys=True), snap.get("name"),
            snap.get("inn") or "", snap.get("kpp") or "", snap.get("ogrn") or "", row["run_id"]]


def report_csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    writer.writerows(inert_row(csv_row(r)) for r in rows)
    return out.getvalue().encode("utf-8")


def report_xlsx(rows: list[dict]) -> bytes:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("reconciliation")
    sheet.append(REPORT_COLUMNS)
    for row in rows:
        sheet.append(text_cells(sheet, csv_row(row)))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def state_counts(uow: EcmUnitOfWork, run_id: str) -> dict[str, int]:
    r = tables.reconciliation_results
    counts = dict((await uow.session.execute(select(r.c.state, func.count()).where(r.c.run_id == run_id)
                                             .group_by(r.c.state))).all())
    return {state: counts.get(state, 0) for state in STATES}
