"""The steward's registry actions and the auditors' view of the history chain."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from ecm_service.adapters import tables
from ecm_service.adapters.history import verify_chain
from ecm_service.domain.counterparty import StewardRuleBroken
from ecm_service.entrypoints.api import CounterpartyOut, counterparty_out
from ecm_service.service_layer import steward
from ecm_service.service_layer.registry import COUNTERPARTY
from infra.users import User
from infra.web import correlation_id, require_roles
from schemas.crm_events import Address

router = APIRouter(prefix="/api")
STEWARD = ("steward",)
READERS = ("legal", "finance", "director", "steward", "auditor", "admin")


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=3, max_length=2000)


class OptionalReason(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str | None = Field(None, max_length=2000)


class MergeIn(Reason):
    into_id: str = Field(min_length=1, max_length=36)


class NotDuplicateIn(Reason):
    other_id: str = Field(min_length=1, max_length=36)


class EditIn(Reason):
    name: str | None = Field(None, min_length=1, max_length=500)
    short_name: str | None = Field(None, max_length=300)
    legal_form: str | None = Field(None, max_length=100)
    country: str | None = Field(None, min_length=2, max_length=2)
    inn: str | None = Field(None, max_length=20)
    kpp: str | None = Field(None, max_length=20)
    ogrn: str | None = Field(None, max_length=20)
    vat: str | None = Field(None, max_length=20)
    addresses: list[Address] | None = None

    @field_validator("name")
    @classmethod
    def _keeps_a_name(cls, name: str | None) -> str:
        if name is None:  # left out is kept; null would empty it (it was a 500)
            raise ValueError("a counterparty keeps a name; leave it out to keep it as it is")
        return name


class StewardResult(BaseModel):
    id: str
    status: str
    quality_flags: list[str]
    merged_into: str | None = None
    changed: list[str] | None = None


def _uow(request: Request):
    return request.app.state.container.uow()


async def _run(action):
    try:
        return await action
    except steward.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except StewardRuleBroken as exc:
        raise HTTPException(409, str(exc)) from exc


def _result(record, **extra) -> StewardResult:
    return StewardResult(id=record.id, status=record.status, quality_flags=record.quality_flags,
                         merged_into=record.merged_into, **extra)


@router.post("/counterparties/{counterparty_id}/verify", response_model=StewardResult)
async def verify(counterparty_id: str, body: OptionalReason, request: Request,
                 user: User = Depends(require_roles(*STEWARD))):
    record = await _run(steward.verify(_uow(request), counterparty_id=counterparty_id, user=user,
                                       reason=body.reason, correlation_id=correlation_id(request)))
    return _result(record)


@router.post("/counterparties/{counterparty_id}/reject", response_model=StewardResult)
async def reject(counterparty_id: str, body: Reason, request: Request,
                 user: User = Depends(require_roles(*STEWARD))):
    record = await _run(steward.reject(_uow(request), counterparty_id=counterparty_id, user=user,
                                       reason=body.reason, correlation_id=correlation_id(request)))
    return _result(record)


@router.post("/counterparties/{counterparty_id}/archive", response_model=StewardResult,
             summary="Archive a record (e.g. the company was liquidated); it stays, with its history")
async def archive(counterparty_id: str, body: Reason, request: Request,
                  user: User = Depends(require_roles(*STEWARD))):
    record = await _run(steward.archive(_uow(request), counterparty_id=counterparty_id, user=user,
                                        reason=body.reason, correlation_id=correlation_id(request)))
    return _result(record)


@router.post("/counterparties/{counterparty_id}/merge", response_model=StewardResult)
async def merge(counterparty_id: str, body: MergeIn, request: Request,
                user: User = Depends(require_roles(*STEWARD))):
    record, _ = await _run(steward.merge(_uow(request), counterparty_id=counterparty_id, into_id=body.into_id,
                                         user=user, reason=body.reason, correlation_id=correlation_id(request)))
    return _result(record)


@router.post("/counterparties/{counterparty_id}/not-duplicate")
async def not_duplicate(counterparty_id: str, body: NotDuplicateIn, request: Request,
                        user: User = Depends(require_roles(*STEWARD))) -> dict[str, bool]:
    created = await _run(steward.mark_not_duplicate(_uow(request), counterparty_id=counterparty_id,
                                                    other_id=body.other_id, user=user, reason=body.reason))
    return {"recorded": created}


@router.patch("/counterparties/{counterparty_id}", response_model=StewardResult)
async def edit(counterparty_id: str, body: EditIn, request: Request,
               user: User = Depends(require_roles(*STEWARD))):
    changes = body.model_dump(exclude={"reason"}, exclude_unset=True)
    if "addresses" in changes and changes["addresses"] is not None:
        changes["addresses"] = [Address.model_validate(a).model_dump() for a in changes["addresses"]]
    record, diff = await _run(steward.edit(_uow(request), counterparty_id=counterparty_id, changes=changes,
                                           user=user, reason=body.reason, correlation_id=correlation_id(request)))
    return _result(record, changed=sorted(diff))


@router.get("/counterparties/{counterparty_id}/history")
async def counterparty_history(counterparty_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _uow(request) as uow:
        if await uow.counterparties.get(counterparty_id) is None:
            raise HTTPException(404, f"counterparty {counterparty_id} not found")
        return await uow.history.of(COUNTERPARTY, counterparty_id)


class ChainOut(BaseModel):
    intact: bool
    entries: int
    first_broken_seq: int | None
    problem: Literal["previous entry missing or altered", "entry content does not match its hash"] | None


@router.get("/history/verify", response_model=ChainOut, summary="Check the history chain (auditors)")
async def verify_history(request: Request, _: User = Depends(require_roles("auditor", "admin"))):
    async with _uow(request) as uow:
        report = await verify_chain(uow.session)
    return ChainOut(intact=report.intact, entries=report.entries, first_broken_seq=report.first_broken_seq,
                    problem=report.problem)


@router.get("/counterparties/{counterparty_id}/match",
            summary="What match-or-propose answered for this record, with the evidence, and the steward's review")
async def match_decisions(counterparty_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _uow(request) as uow:
        if await uow.counterparties.get(counterparty_id) is None:
            raise HTTPException(404, f"counterparty {counterparty_id} not found")
        return await uow.counterparties.match_decisions_of([counterparty_id])


class MergeHeldApart(BaseModel):
    merged_ref: str
    survivor_ref: str
    merged_at: datetime
    record: CounterpartyOut
    survivor_record: CounterpartyOut


@router.get("/reports/merges-held-apart", response_model=list[MergeHeldApart],
            summary="Organizations the CRM merged whose registry records are still two, for the steward")
async def merges_held_apart(request: Request, _: User = Depends(require_roles("steward", "auditor", "admin"))):
    async with _uow(request) as uow:
        return [MergeHeldApart(**{**h, "record": await counterparty_out(uow, h["record"]),
                                  "survivor_record": await counterparty_out(uow, h["survivor_record"])})
                for h in await steward.merges_held_apart(uow)]


@router.get("/reports/matching-quality",
            summary="How often stewards confirm or overturn automatic links and proposals, by rule")
async def matching_quality(request: Request, _: User = Depends(require_roles("steward", "auditor", "admin"))):
    m = tables.match_decisions
    async with _uow(request) as uow:
        rows = await uow.session.execute(
            select(m.c.outcome, m.c.rule, m.c.review, func.count()).group_by(m.c.outcome, m.c.rule, m.c.review)
            .order_by(m.c.outcome, m.c.rule))
        counts: dict[tuple, dict] = {}
        for outcome, rule, review, n in rows:
            entry = counts.setdefault((outcome, rule), {"outcome": outcome, "rule": rule, "total": 0,
                                                        "confirmed": 0, "overturned": 0, "unreviewed": 0})
            entry["total"] += n
            entry[review or "unreviewed"] += n
    for entry in counts.values():
        reviewed = entry["confirmed"] + entry["overturned"]
        entry["overturn_rate"] = round(entry["overturned"] / reviewed, 3) if reviewed else None
    return list(counts.values())
