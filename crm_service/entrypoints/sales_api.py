"""Sales API: organization search, editing, duplicates and merge; the organization card
and its timeline; contacts; leads and conversion; the deal funnel; activities and my
day; documents from templates; spreadsheet imports."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from crm_service.adapters import tables
from crm_service.domain.model import ACTIVITY_KINDS
from crm_service.entrypoints.api import OrganizationIn, _org_out, _public_approval, answering
from crm_service.service_layer import handlers, import_jobs, imports, sales
from infra.users import User
from infra.web import correlation_id, require_roles

router = APIRouter(prefix="/api", tags=["sales"])
SALES = ("sales", "manager", "admin")
READERS = ("sales", "manager", "admin", "auditor")


def _container(request: Request):
    return request.app.state.container


async def _actor(request: Request, user: User):
    async with _container(request).uow() as uow:
        return await sales.actor_for(uow, user)


# --- organizations ---------------------------------------------------------------------------


@router.get("/organizations", summary="Search and filter organizations")
async def list_organizations(request: Request, q: str | None = Query(None, max_length=200),
                             owner: Literal["me", "any"] = "any", region: str | None = None,
                             category: str | None = None, link_status: str | None = None,
                             limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=10_000_000),
                             after_id: str | None = Query(None, max_length=36,
                                                          description="id order, after this id (keyset paging)"),
                             user: User = Depends(require_roles(*READERS, "integration"))):
    async with _container(request).uow() as uow:
        found, total = await sales.search_organizations(
            uow, q=q, owner_id=user.id if owner == "me" else None, region=region, category=category,
            link_status=link_status, limit=limit, offset=offset, after_id=after_id)
    return {"total": total, "items": [_org_out(o) for o in found]}


class OrganizationPatch(OrganizationIn):
    name: str | None = Field(None, min_length=1, max_length=500)


@router.patch("/organizations/{org_id}", summary="Edit an organization (owner, team manager, admin)")
async def edit_organization(org_id: str, body: OrganizationPatch, request: Request,
                            user: User = Depends(require_roles(*SALES))):
    changes = body.model_dump(exclude_unset=True, mode="json")
    org = await answering(sales.update_organization(_container(request).uow(), actor=await _actor(request, user),
                                               organization_id=org_id, changes=changes))
    return _org_out(org)


@router.get("/organizations/{org_id}/duplicates", summary="Possible duplicates: same INN or a similar name")
async def organization_duplicates(org_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        org = await uow.organizations.get(org_id)
        if org is None:
            raise HTTPException(404, f"organization {org_id} not found")
        return await sales.duplicate_hints(uow, name=org.name, inn=org.inn, exclude_id=org.id)


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    into_id: str = Field(min_length=1, max_length=36)


@router.post("/organizations/{org_id}/merge", summary="Merge this organization into another one")
async def merge_organization(org_id: str, body: MergeIn, request: Request,
                             user: User = Depends(require_roles(*SALES))):
    survivor = await answering(sales.merge_organizations(
        _container(request).uow(), actor=await _actor(request, user), organization_id=org_id, into_id=body.into_id,
        correlation_id=correlation_id(request)))
    return _org_out(survivor)


async def organization_card(container, org_id: str) -> dict:
    async with container.uow() as uow:
        org = await uow.organizations.get(org_id)
        if org is None:
            raise HTTPException(404, f"organization {org_id} not found")
        t = tables.deals
        deals = [dict(r) for r in (await uow.session.execute(
            select(t).where(t.c.organization_id == org_id).order_by(t.c.created_at.desc()))).mappings()]
        return {"organization": _org_out(org, await sales.duplicate_hints(uow, name=org.name, inn=org.inn,
                                                                          exclude_id=org.id)),
                "contacts": [c.__dict__ for c in await uow.contacts.of_organization(org_id)],
                "deals": deals,
                "approvals": [_public_approval(a) for a in await sales.approvals_of(
                    uow, organization_id=org_id, unanswered_after=container.unanswered_after)],
                "timeline": await sales.timeline(uow, org_id)}


@router.get("/organizations/{org_id}/card",
            summary="The combined view: organization, contacts, deals, approvals and one timeline")
async def get_card(org_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    return await organization_card(_container(request), org_id)


# --- contacts and leads ----------------------------------------------------------------------


class ImportantDate(BaseModel):
    label: str = Field(min_length=1, max_length=100)
    date: date


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    full_name: str = Field(min_length=1, max_length=300)
    organization_id: str | None = Field(None, min_length=1, max_length=36)
    position: str | None = Field(None, max_length=200)
    phones: list[str] = Field(default_factory=list, max_length=20)
    emails: list[str] = Field(default_factory=list, max_length=20)
    important_dates: list[ImportantDate] = Field(default_factory=list, max_length=20)
    notes: str | None = Field(None, max_length=10000)


@router.post("/contacts", status_code=201, summary="A person, optionally linked to an organization")
async def create_contact(body: ContactIn, request: Request, user: User = Depends(require_roles(*SALES))):
    fields = body.model_dump(mode="json")
    contact = await answering(sales.create_contact(_container(request).uow(), actor=await _actor(request, user),
                                              **fields))
    return contact.__dict__


@router.get("/organizations/{org_id}/contacts")
async def organization_contacts(org_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        return [c.__dict__ for c in await uow.contacts.of_organization(org_id)]


class LeadIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=500)
    company_name: str | None = Field(None, max_length=500)
    person_name: str | None = Field(None, max_length=300)
    phones: list[str] = Field(default_factory=list, max_length=20)
    emails: list[str] = Field(default_factory=list, max_length=20)
    inn: str | None = Field(None, max_length=20)
    source: str | None = Field(None, max_length=200)
    notes: str | None = Field(None, max_length=10000)


@router.post("/leads", status_code=201)
async def create_lead(body: LeadIn, request: Request, user: User = Depends(require_roles(*SALES))):
    lead = await sales.create_lead(_container(request).uow(), actor=await _actor(request, user),
                                   **body.model_dump())
    return lead.__dict__


@router.get("/leads")
async def list_leads(request: Request, status: Literal["open", "converted", "disqualified"] | None = "open",
                     user: User = Depends(require_roles(*READERS))):
    t = tables.leads
    query = select(t).order_by(t.c.created_at.desc()).limit(500)
    if status:
        query = query.where(t.c.status == status)
    async with _container(request).uow() as uow:
        return [dict(r) for r in (await uow.session.execute(query)).mappings()]


class ConvertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    create_contact: bool = True
    create_organization: bool = True
    create_deal: bool = True
    organization_id: str | None = Field(None, min_length=1, max_length=36,
                                        description="link to this organization instead")
    deal_title: str | None = Field(None, max_length=500)


@router.post("/leads/{lead_id}/convert",
             summary="Contact, organization and deal from a lead in one action; never asks for missing data")
async def convert_lead(lead_id: str, body: ConvertIn, request: Request, user: User = Depends(require_roles(*SALES))):
    return await answering(sales.convert_lead(_container(request).uow(), actor=await _actor(request, user),
                                         lead_id=lead_id, funnel=_container(request).funnel, **body.model_dump()))


class DisqualifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=1, max_length=500)


@router.post("/leads/{lead_id}/disqualify", summary="Close a lead without converting it")
async def disqualify_lead(lead_id: str, body: DisqualifyIn, request: Request,
                          user: User = Depends(require_roles(*SALES))):
    return (await answering(sales.disqualify_lead(_container(request).uow(), actor=await _actor(request, user),
                                             lead_id=lead_id, reason=body.reason))).__dict__


# --- deals -----------------------------------------------------------------------------------


@router.get("/funnel", summary="The configured deal funnel")
async def funnel(request: Request, _: User = Depends(require_roles(*READERS))):
    return _container(request).funnel


class DealPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str | None = Field(None, min_length=1, max_length=500)
    stage: str | None = Field(None, max_length=32)
    amount: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=2)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    expected_close_date: date | None = None
    probability: int | None = Field(None, ge=0, le=100)


@router.patch("/deals/{deal_id}", summary="Edit a deal or move it along the funnel")
async def edit_deal(deal_id: str, body: DealPatch, request: Request, user: User = Depends(require_roles(*SALES))):
    deal = await answering(sales.update_deal(_container(request).uow(), actor=await _actor(request, user),
                                        deal_id=deal_id, changes=body.model_dump(exclude_unset=True),
                                        funnel=_container(request).funnel))
    return deal.__dict__


@router.get("/deals/board", summary="Deals by funnel stage")
async def deal_board(request: Request, owner: Literal["me", "any"] = "any",
                     user: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        return await sales.deal_board(uow, _container(request).funnel, owner_id=user.id if owner == "me" else None)


@router.get("/deals/{deal_id}/stages", summary="The deal's stage history: who moved it, when")
async def deal_stages(deal_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        return await sales.stage_history(uow, deal_id)


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=100)
    doc_type: str = Field("contract", pattern=r"^[a-z0-9_\-]{1,64}$")
    request_approval: bool = False


@router.get("/document-templates")
async def document_templates(_: User = Depends(require_roles(*READERS))):
    return sales.list_templates()


@router.post("/deals/{deal_id}/documents/generate", status_code=201,
             summary="Fill a template with the deal's and organization's fields, attach it, optionally send it")
async def generate_document(deal_id: str, body: GenerateIn, request: Request,
                            user: User = Depends(require_roles(*SALES))):
    container = _container(request)
    doc = await answering(sales.generate_document(
        container.uow(), container.file_store, actor=await _actor(request, user), user_name=user.name, deal_id=deal_id,
        template=body.template, doc_type=body.doc_type, max_bytes=container.settings.max_upload_bytes))
    out = {"document": doc.__dict__, "approval_request": None}
    if body.request_approval:
        approval = await handlers.request_approval(container.uow(), user_id=user.id, deal_id=deal_id,
                                                   document_id=doc.id, correlation_id=correlation_id(request))
        out["approval_request"] = {"id": approval.id, "status": approval.status}
    return out


# --- activities ------------------------------------------------------------------------------


class ActivityIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: Literal[ACTIVITY_KINDS]  # type: ignore[valid-type]
    subject: str = Field(min_length=1, max_length=500)
    notes: str | None = Field(None, max_length=10000)
    organization_id: str | None = Field(None, min_length=1, max_length=36)
    deal_id: str | None = Field(None, min_length=1, max_length=36)
    contact_id: str | None = Field(None, min_length=1, max_length=36)
    # With its offset: a time without one is ambiguous (it was a 500 at the database).
    due_at: AwareDatetime | None = Field(None, description="with its UTC offset, e.g. 2026-12-07T15:00:00+03:00")


@router.post("/activities", status_code=201, summary="A call, meeting, e-mail, note or task")
async def create_activity(body: ActivityIn, request: Request, user: User = Depends(require_roles(*SALES))):
    activity = await answering(sales.create_activity(_container(request).uow(), actor=await _actor(request, user),
                                                **body.model_dump()))
    return activity.__dict__


@router.post("/activities/{activity_id}/done")
async def complete_activity(activity_id: str, request: Request, user: User = Depends(require_roles(*SALES))):
    activity = await answering(sales.complete_activity(_container(request).uow(), actor=await _actor(request, user),
                                                  activity_id=activity_id))
    return activity.__dict__


@router.get("/my-day", summary="Today's planned contacts and tasks, and what is overdue")
async def my_day(request: Request, user: User = Depends(require_roles(*SALES))):
    async with _container(request).uow() as uow:
        day = await sales.my_day(uow, user_id=user.id, unanswered_after=_container(request).unanswered_after)
    return {**day, "approvals": [_public_approval(a) for a in day["approvals"]]}


class HookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notify_hook: str | None = Field(None, max_length=500, pattern=r"^(https://|http://|mailto:).+",
                                    description="a chat webhook (https://...) or mailto:address; null to stop")


@router.put("/me/notify-hook", summary="Where my reminders go besides the CRM")
async def set_notify_hook(body: HookIn, request: Request, user: User = Depends(require_roles(*SALES))):
    await sales.set_notify_hook(_container(request).uow(), user_id=user.id, hook=body.notify_hook)
    return {"notify_hook": body.notify_hook}


# --- spreadsheet imports ---------------------------------------------------------------------


class ImportOut(BaseModel):
    id: str
    status: str
    file_name: str
    header: list[str]
    mapping: dict[str, str]
    fields: list[str]
    rows_total: int | None
    rows_done: int
    counts: dict[str, int]
    error: str | None
    report_url: str | None


async def _import_row(container, import_id: str) -> dict:
    try:
        return await import_jobs.get_import(container.session_factory, import_id,
                                            stale_after=container.settings.import_stale_seconds)
    except import_jobs.ImportRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc


def _import_out(row: dict) -> ImportOut:
    ready = row["status"] in ("dry_run", "applied") and row["report_path"]
    return ImportOut(**{k: row[k] for k in ("id", "status", "file_name", "header", "mapping", "rows_total",
                                             "rows_done", "counts", "error")},
                     fields=list(imports.FIELDS), report_url=f"/api/imports/{row['id']}/report" if ready else None)


async def _job(coro):
    try:
        return await coro
    except import_jobs.ImportRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc


@router.post("/imports", status_code=201, response_model=ImportOut,
             summary="Upload a CSV or XLSX of organizations: the column mapping is suggested from the header")
async def upload_import(request: Request, file: UploadFile = File(...), user: User = Depends(require_roles(*SALES))):
    container = _container(request)
    import_id = await _job(import_jobs.create_import(container, file.file, filename=file.filename, user_id=user.id))
    return _import_out(await _import_row(container, import_id))


@router.get("/imports/{import_id}", response_model=ImportOut)
async def import_status(import_id: str, request: Request, _: User = Depends(require_roles(*SALES, "auditor"))):
    return _import_out(await _import_row(_container(request), import_id))


class MappingIn(BaseModel):
    mapping: dict[str, str] = Field(description="{column index: field}, e.g. {\"0\": \"name\", \"3\": \"inn\"}")


@router.put("/imports/{import_id}/mapping", response_model=ImportOut, summary="Change the column mapping")
async def set_mapping(import_id: str, body: MappingIn, request: Request, user: User = Depends(require_roles(*SALES))):
    container = _container(request)
    await _job(import_jobs.set_mapping(container.session_factory, import_id, body.mapping))
    return _import_out(await _import_row(container, import_id))


@router.post("/imports/{import_id}/dry-run", status_code=202, response_model=ImportOut,
             summary="Count what would be created, updated, flagged; nothing is written")
async def dry_run(import_id: str, request: Request, user: User = Depends(require_roles(*SALES))):
    await _job(import_jobs.start(_container(request), import_id, user_id=user.id, apply=False))
    return _import_out(await _import_row(_container(request), import_id))


@router.post("/imports/{import_id}/apply", status_code=202, response_model=ImportOut,
             summary="Apply after a dry run; bad rows are reported, never abort the import")
async def apply(import_id: str, request: Request, user: User = Depends(require_roles(*SALES))):
    await _job(import_jobs.start(_container(request), import_id, user_id=user.id, apply=True))
    return _import_out(await _import_row(_container(request), import_id))


@router.get("/imports/{import_id}/report", summary="The row-level report (CSV)")
async def import_report(import_id: str, request: Request, _: User = Depends(require_roles(*SALES, "auditor"))):
    row = await _import_row(_container(request), import_id)
    if row["status"] not in ("dry_run", "applied") or not row["report_path"]:
        raise HTTPException(409, f"the import is {row['status']}; the report is not ready")
    return FileResponse(row["report_path"], media_type="text/csv",
                        filename=f"import-{import_id}-{row['status']}.csv")
