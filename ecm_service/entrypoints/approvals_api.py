"""Approvals for approvers and the staff around them: cards, decisions, the inbox,
deputies, delay reasons and their report, reminders, and the route admin."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import and_, or_, select

from ecm_service.adapters import tables
from ecm_service.domain.approval import Actor, Approval
from ecm_service.service_layer import approvals as cases
from ecm_service.service_layer import deputies
from ecm_service.service_layer.access import can_read_document, ensure_document_readable
from ecm_service.service_layer.approvals import APPROVAL
from infra import business_day
from infra.users import User
from infra.web import csv_download, require_roles
from schemas.common import ExternalRef

router = APIRouter(prefix="/api", tags=["approvals"])

STAFF = ("legal", "finance", "director", "steward", "auditor", "admin", "integration")
# Who may hold a place on a stage; the route decides which of them actually does.
DECIDERS = ("legal", "finance", "director", "steward")


def _container(request: Request):
    return request.app.state.container


def actor_of(user: User) -> Actor:
    return Actor(id=user.id, name=user.name, role=user.role)


class StepOut(BaseModel):
    stage_no: int
    name: str
    role: str
    status: str
    assignees: list[dict]
    quorum: int
    due_at: datetime | None
    overdue: bool
    escalation_role: str | None
    escalated_at: datetime | None
    delay_reason_code: str | None
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None


class PlaceOut(BaseModel):
    stage_no: int
    round: int
    assignee: str
    status: str
    decided_by_name: str | None
    on_behalf_of: str | None
    via_escalation: bool
    decided_at: datetime | None
    comment: str | None
    sha256: str | None


class ApprovalOut(BaseModel):
    id: str
    status: str
    current_stage: str | None
    title: str
    doc_type: str
    route: dict
    round: int
    revision: int
    reason: str | None
    counterparty_id: str | None
    initiator_ref: str
    external_refs: list[ExternalRef]
    document: dict
    steps: list[StepOut]
    places: list[PlaceOut]
    history: list[dict] = []
    created_at: datetime
    updated_at: datetime


def approval_out(approval: Approval, refs, history=()) -> ApprovalOut:
    now = datetime.now(timezone.utc)
    step = approval.current_step if approval.is_open else None
    return ApprovalOut(
        id=approval.id, status=approval.status, current_stage=step.name if step else None, title=approval.title,
        doc_type=approval.doc_type, route={"doc_type": approval.route_doc_type, "version": approval.route_version},
        round=approval.round, revision=approval.revision, reason=approval.reason,
        counterparty_id=approval.counterparty_id, initiator_ref=approval.initiator_ref, external_refs=refs,
        document={"id": approval.document_id, "version_id": approval.document_version_id,
                  "sha256": approval.document_sha256},
        steps=[StepOut(**{k: getattr(s, k) for k in StepOut.model_fields if k != "overdue"}, overdue=s.overdue(now))
               for s in approval.steps],
        places=[PlaceOut(**{k: getattr(p, k) for k in PlaceOut.model_fields if k != "assignee"},
                         assignee=p.assignee_user or p.assignee_role) for p in approval.assignments],
        history=list(history), created_at=approval.created_at, updated_at=approval.updated_at,
    )


async def readable_approval(uow, container, user: User, approval_id: str) -> Approval:
    approval = await uow.approvals.get(approval_id)
    if approval is None:
        raise HTTPException(404, f"approval {approval_id} not found")
    document = await uow.documents.get(approval.document_id)
    await ensure_document_readable(uow, user, document, container.document_types, business_day.today())
    return approval


@router.get("/approvals", response_model=list[ApprovalOut])
async def list_approvals(
    request: Request, external_ref: str | None = None, status: str | None = None,
    counterparty_id: str | None = Query(None, max_length=36, description="a registry record's approvals (a merged "
                                        "record's went with it to the record it was merged into)"),
    limit: int = Query(100, ge=1, le=1000), user: User = Depends(require_roles(*STAFF)),
):
    """Oldest first; only approvals of documents the caller may see."""
    container = _container(request)
    t = tables.approvals
    query = select(t.c.id, t.c.document_id).order_by(t.c.created_at).limit(limit)
    async with container.uow() as uow:
        if external_ref is not None:
            try:
                found = await uow.external_refs.find(APPROVAL, ExternalRef.parse(external_ref))
            except ValueError as exc:
                raise HTTPException(422, "external_ref must look like <system>:<id>, e.g. crm:42") from exc
            query = query.where(t.c.id.in_([found] if found else []))
        if status:
            query = query.where(t.c.status == status)
        if counterparty_id:
            query = query.where(t.c.counterparty_id == counterparty_id)
        out = []
        for approval_id, document_id in (await uow.session.execute(query)).all():
            document = await uow.documents.get(document_id)
            if await can_read_document(uow, user, document, container.document_types, business_day.today()):
                out.append(approval_out(await uow.approvals.get(approval_id),
                                        await uow.external_refs.refs_of(APPROVAL, approval_id)))
        return out


@router.get("/approvals/{approval_id}", response_model=ApprovalOut)
async def get_approval(approval_id: str, request: Request, user: User = Depends(require_roles(*STAFF))):
    container = _container(request)
    async with container.uow() as uow:
        approval = await readable_approval(uow, container, user, approval_id)
        return approval_out(approval, await uow.external_refs.refs_of(APPROVAL, approval_id),
                            await uow.history.of(APPROVAL, approval_id))


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject", "return"]
    comment: str | None = Field(None, max_length=5000,
                                description="internal: stays in the ECM; required to reject or return")
    reason: str | None = Field(None, max_length=500, description="shown to the requester on rejection, or on return "
                                                                "(what to change)")

    @model_validator(mode="after")
    def _comment_when_refusing(self):
        if self.decision in ("reject", "return") and not (self.comment or "").strip():
            raise ValueError(f"a comment is required to {self.decision}")
        return self


@router.post("/approvals/{approval_id}/decisions", response_model=ApprovalOut)
async def decide(approval_id: str, body: DecisionIn, request: Request,
                 user: User = Depends(require_roles(*DECIDERS))):
    container = _container(request)
    approval = await cases.decide(container.uow(), approval_id=approval_id, actor=actor_of(user),
                                  decision=body.decision, comment=body.comment, reason=body.reason)
    async with container.uow() as uow:
        return approval_out(approval, await uow.external_refs.refs_of(APPROVAL, approval_id))


class DelayReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64)
    text: str | None = Field(None, max_length=2000, description="free text: stays in the ECM")


@router.get("/delay-reasons", summary="The configured delay reason codes")
async def delay_reason_codes(request: Request, _: User = Depends(require_roles(*STAFF))):
    return [{"code": c, "label": label} for c, label in _container(request).delay_reasons.items()]


@router.post("/approvals/{approval_id}/delay-reasons", response_model=ApprovalOut,
             summary="Why the current stage is late (by whoever may decide it)")
async def record_delay_reason(approval_id: str, body: DelayReasonIn, request: Request,
                              user: User = Depends(require_roles(*DECIDERS))):
    container = _container(request)
    try:
        approval = await cases.record_delay_reason(
            container.uow(), approval_id=approval_id, actor=actor_of(user), code=body.code, text=body.text,
            codes=container.delay_reasons)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    async with container.uow() as uow:
        return approval_out(approval, await uow.external_refs.refs_of(APPROVAL, approval_id))


async def delay_report_rows(container) -> list[dict]:
    async with container.uow() as uow:
        rows = await uow.delay_reasons.report()
    return [{**r, "label": container.delay_reasons.get(r["code"], r["code"])} for r in rows]


REPORT_COLUMNS = ["stage_name", "role", "doc_type", "code", "label", "count"]


@router.get("/reports/delay-reasons", summary="Delay reasons by stage, role and document type")
async def delay_reason_report(request: Request, format: Literal["json", "csv"] = "json",
                              _: User = Depends(require_roles("legal", "finance", "director", "auditor", "admin"))):
    rows = await delay_report_rows(_container(request))
    if format == "json":
        return rows
    return csv_download(rows, REPORT_COLUMNS, "delay-reasons.csv")


# --- the inbox ---------------------------------------------------------------------------


async def inbox_for(container, user: User) -> list[dict]:
    """Stages waiting for this user now (their own places, those of people they stand in
    for today, and escalated stages of their role): overdue first, then by due date."""
    actor = actor_of(user)
    a, s, t = tables.approval_assignments, tables.approval_steps, tables.approvals
    async with container.uow() as uow:
        people = [actor, *await uow.deputies.principals_of(user.id, business_day.today())]
        place = or_(*[or_(a.c.assignee_user == p.name, and_(a.c.assignee_role == p.role, a.c.assignee_user.is_(None)))
                      for p in people])
        open_place = (select(a.c.approval_id).join(t, and_(t.c.id == a.c.approval_id, t.c.round == a.c.round,
                                                             t.c.current_stage_no == a.c.stage_no))
                      .where(a.c.status == "pending", t.c.status == "in_progress", place))
        escalated = (select(s.c.approval_id).join(t, and_(t.c.id == s.c.approval_id,
                                                           t.c.current_stage_no == s.c.stage_no))
                     .where(t.c.status == "in_progress", s.c.status == "pending", s.c.escalated_at.is_not(None),
                            s.c.escalation_role == user.role))
        ids = set((await uow.session.execute(open_place)).scalars()) | set(
            (await uow.session.execute(escalated)).scalars())
        items = []
        now = datetime.now(timezone.utc)
        for approval_id in ids:
            approval = await uow.approvals.get(approval_id)
            try:
                _, behalf, via_escalation = approval.place_for(actor, people[1:])
            except Exception:  # already decided on this stage by this person
                continue
            step = approval.current_step
            items.append({"approval": approval, "stage": step.name, "due_at": step.due_at,
                          "overdue": step.overdue(now), "on_behalf_of": behalf.name if behalf else None,
                          "via_escalation": via_escalation, "delay_reason_code": step.delay_reason_code})
        # Whom each document is with, and how far the registry trusts it: one read for all.
        parties = await uow.counterparties.get_many(sorted({i["approval"].counterparty_id for i in items
                                                            if i["approval"].counterparty_id}))
        for item in items:
            item["counterparty"] = parties.get(item["approval"].counterparty_id)
    far = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(items, key=lambda i: (not i["overdue"], i["due_at"] or far, i["approval"].created_at))


class InboxItem(BaseModel):
    approval_id: str
    title: str
    doc_type: str
    stage: str
    due_at: datetime | None
    overdue: bool
    on_behalf_of: str | None
    via_escalation: bool
    delay_reason_code: str | None
    counterparty_id: str | None = None
    counterparty_name: str | None = None
    counterparty_status: str | None = Field(None, description="the registry record's: pending_verification, "
                                                              "verified, …")


@router.get("/inbox", response_model=list[InboxItem], summary="My stages: overdue first")
async def inbox(request: Request, user: User = Depends(require_roles(*DECIDERS))):
    return [InboxItem(approval_id=i["approval"].id, title=i["approval"].title, doc_type=i["approval"].doc_type,
                      **{k: i[k] for k in ("stage", "due_at", "overdue", "on_behalf_of", "via_escalation",
                                           "delay_reason_code")},
                      **({"counterparty_id": i["counterparty"].id, "counterparty_name": i["counterparty"].name,
                          "counterparty_status": i["counterparty"].status} if i["counterparty"] else {}))
            for i in await inbox_for(_container(request), user)]


@router.get("/notifications", summary="Reminders and escalations for me or my role")
async def notifications(request: Request, user: User = Depends(require_roles(*DECIDERS, "admin"))):
    async with _container(request).uow() as uow:
        return await uow.notifications.for_actor(actor_of(user))


# --- deputies ----------------------------------------------------------------------------


class DeputyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deputy: str = Field(min_length=1, max_length=200, description="the deputy's user name")
    starts_on: date
    ends_on: date

    @model_validator(mode="after")
    def _range(self):
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on is before starts_on")
        return self


@router.get("/deputies", summary="Deputies I named, and whom I stand in for")
async def list_deputies(request: Request, user: User = Depends(require_roles(*DECIDERS))):
    async with _container(request).uow() as uow:
        return await uow.deputies.of_user(user.id)


@router.post("/deputies", status_code=201, summary="Name a deputy for a date range")
async def add_deputy(body: DeputyIn, request: Request, user: User = Depends(require_roles(*DECIDERS))):
    try:
        return await deputies.name_deputy(_container(request).uow(), user_id=user.id, deputy_name=body.deputy,
                                          starts_on=body.starts_on, ends_on=body.ends_on, deciders=DECIDERS)
    except deputies.DeputyRefused as exc:
        raise HTTPException(422, str(exc)) from exc


@router.delete("/deputies/{deputy_id}", status_code=204)
async def revoke_deputy(deputy_id: str, request: Request, user: User = Depends(require_roles(*DECIDERS))):
    try:
        await deputies.revoke_deputy(_container(request).uow(), user_id=user.id, deputy_row_id=deputy_id)
    except deputies.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


# --- route administration ----------------------------------------------------------------


class RouteIn(BaseModel):
    reopen: Literal["all", "not_passed"] = "all"
    stages: list[dict] = Field(min_length=1, max_length=50)


@router.get("/admin/routes", tags=["route admin"], summary="Every version of every route")
async def list_routes(request: Request, _: User = Depends(require_roles("admin", "auditor"))):
    async with _container(request).uow() as uow:
        return await uow.routes.versions()


@router.put("/admin/routes/{doc_type}", tags=["route admin"], status_code=201,
            summary="Change a route: creates a new version; approvals in flight keep theirs")
async def change_route(doc_type: str, body: RouteIn, request: Request, user: User = Depends(require_roles("admin"))):
    if not doc_type.replace("_", "").replace("-", "").isalnum() or len(doc_type) > 64:
        raise HTTPException(422, "doc_type is letters, digits, '-' and '_' (up to 64)")
    route = await cases.change_route(_container(request).uow(), doc_type=doc_type, spec=body.model_dump(), user=user)
    return {"doc_type": route.doc_type, "version": route.version, "spec": route.spec()}


@router.get("/admin/routes/in-flight", tags=["route admin"],
            summary="Preview: which approvals in flight run on which route version")
async def in_flight_preview(request: Request, _: User = Depends(require_roles("admin", "auditor"))):
    async with _container(request).uow() as uow:
        counts = await uow.routes.in_flight_by_version()
        latest = {r["doc_type"]: r["version"] for r in await uow.routes.versions()}
    for row in counts:
        row["latest_version"] = latest.get(row["doc_type"])
        row["on_latest"] = row["version"] == row["latest_version"]
    return counts


@router.post("/admin/deadlines/check", tags=["route admin"],
             summary="Run the deadline clock now (it also runs in the background)",
             description="Reminders and escalations due now, and the withdrawals kept as having come before "
                         "their approval's start that met it after all; answers what it did: "
                         '`{"reminded", "escalated", "withdrawn"}`.')
async def check_deadlines(request: Request, _: User = Depends(require_roles("admin"))):
    return await cases.deadline_clock_tick(_container(request).uow)


def _kept_withdrawal(row: dict, now: datetime) -> dict:
    return {"request_ref": {"system": row["system"], "id": row["external_id"]}, "reason": row["reason"],
            "withdrawn_by": row["withdrawn_by"], "withdrawn_at": row["withdrawn_at"],
            "received_at": row["received_at"], "waiting_seconds": round((now - row["received_at"]).total_seconds()),
            "command_id": row["command_id"]}


@router.get("/admin/withdrawals-before-start", tags=["route admin"],
            summary="Withdrawals kept because their approval's start has not reached the ECM, oldest first")
async def withdrawals_before_start(request: Request, limit: int = Query(100, ge=1, le=1000),
                                   _: User = Depends(require_roles("admin"))):
    async with _container(request).uow() as uow:
        rows, total = await uow.approvals.kept_withdrawals(limit)
    now = datetime.now(timezone.utc)
    return {"total": total, "items": [_kept_withdrawal(row, now) for row in rows]}


@router.delete("/admin/withdrawals-before-start/{system}/{external_id}", tags=["route admin"],
               summary="Let a kept withdrawal go: its approval's start will not come")
async def discard_withdrawal_before_start(request: Request, system: str = Path(max_length=32),
                                          external_id: str = Path(max_length=64),
                                          user: User = Depends(require_roles("admin"))):
    ref = ExternalRef(system=system, id=external_id)
    try:
        kept = await cases.discard_withdrawal_before_start(_container(request).uow(), ref, user_id=user.id)
    except LookupError as exc:
        raise HTTPException(404, f"no withdrawal is kept for {ref.as_text()}") from exc
    return {"discarded": _kept_withdrawal(kept, datetime.now(timezone.utc))}
