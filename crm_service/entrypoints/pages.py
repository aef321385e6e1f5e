"""Pages for sales (FastAPI + Jinja2, no JavaScript): organizations with search and
filters, the organization card with its timeline and approvals, the deal board, the deal
(its documents, one action to send one for approval, where each approval stands), the
import wizard and my day. Same rights as the API."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select

from crm_service.adapters import tables
from crm_service.domain.rights import NotAllowed
from crm_service.entrypoints.api import _check_deal_owner
from crm_service.entrypoints.sales_api import (
    ContactIn,
    HookIn,
    LeadIn,
    OrganizationPatch,
    _import_row,
    organization_card,
)
from crm_service.service_layer import handlers, import_jobs, imports, sales
from infra import business_day
from infra.pages import add_login_routes, errors_text, page_user_dependency
from infra.users import User
from infra.web import correlation_id, receive_upload, safe_filename

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["local"] = business_day.local_text  # times as the company's clock reads them
PAGE_ROLES = ("sales", "manager", "admin", "auditor")
WRITERS = ("sales", "manager", "admin")
page_user = page_user_dependency(PAGE_ROLES)
add_login_routes(router, templates, roles=PAGE_ROLES, home=lambda user: "/ui/my-day" if user.role in WRITERS
                 else "/ui/organizations")


def render(request: Request, template: str, user: User | None, status: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"user": user, **context}, status_code=status)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", None, status=status, message=message, status_code=status)


def _writer(user: User) -> None:
    if user.role not in WRITERS:
        raise HTTPException(403, f"role {user.role!r} reads only")


def _back(path: str, *, error: str | None = None, done: str | None = None) -> RedirectResponse:
    """Back to the page the form was on, with what went wrong or what was done."""
    query = f"?error={quote(error)}" if error else f"?done={done}" if done else ""
    return RedirectResponse(f"{path}{query}", status_code=303)


@router.get("/")
async def home(user: User = Depends(page_user)):
    return RedirectResponse("/ui/my-day" if user.role in WRITERS else "/ui/organizations", status_code=303)


@router.get("/organizations", response_class=HTMLResponse)
async def organizations(request: Request, q: str = "", region: str = "", category: str = "", link: str = "",
                        mine: str = "", page: int = Query(1, ge=1, le=100_000), user: User = Depends(page_user)):
    page = max(page, 1)
    async with request.app.state.container.uow() as uow:
        found, total = await sales.search_organizations(
            uow, q=q[:200], owner_id=user.id if mine else None, region=region or None, category=category or None,
            link_status=link or None, limit=50, offset=(page - 1) * 50)
    return render(request, "organizations.html", user, found=found, total=total, q=q, region=region,
                  category=category, link=link, mine=mine, page=page, link_text=sales.link_text)


@router.post("/organizations")
async def quick_entry(request: Request, name: str = Form(..., min_length=1, max_length=500),
                      inn: str = Form("", max_length=20), phone: str = Form("", max_length=100),
                      user: User = Depends(page_user)):
    _writer(user)
    org = await handlers.create_organization(
        request.app.state.container.uow(), user_id=user.id, name=name.strip(), inn=inn.strip() or None,
        phones=[phone.strip()] if phone.strip() else [])
    return RedirectResponse(f"/ui/organizations/{org.id}?created=1", status_code=303)


@router.get("/organizations/{org_id}", response_class=HTMLResponse)
async def organization_page(org_id: str, request: Request, user: User = Depends(page_user)):
    container = request.app.state.container
    card = await organization_card(container, org_id)
    async with container.uow() as uow:
        owner_name = (await uow.session.execute(select(tables.users.c.name).where(
            tables.users.c.id == card["organization"].owner_id))).scalar()
    return render(request, "organization.html", user, card=card, org=card["organization"], owner_name=owner_name,
                  created=request.query_params.get("created"), error=request.query_params.get("error"),
                  done=request.query_params.get("done"))


EDITABLE = ("name", "inn", "kpp", "ogrn", "legal_form", "country", "website", "activity_type", "region", "org_group",
            "category", "lead_source", "notes")
LISTS = ("phones", "emails")  # one per line, or separated by commas or semicolons


@router.post("/organizations/{org_id}/edit")
async def edit_organization(org_id: str, request: Request, user: User = Depends(page_user)):
    """The card's edit form, with the API's limits and rights: an emptied field is cleared
    (the name excepted), identifiers that look wrong come back as hints, never refusals."""
    _writer(user)
    container = request.app.state.container
    back = f"/ui/organizations/{org_id}"
    form = await request.form()
    changes = {k: (str(form[k]).strip() or None) for k in EDITABLE if k in form}
    if changes.get("country"):
        changes["country"] = changes["country"].upper()
    for k in LISTS:
        if k in form:
            changes[k] = _list(str(form[k]))
    try:
        changes = OrganizationPatch.model_validate(changes).model_dump(exclude_unset=True, mode="json")
    except ValidationError as exc:
        return _back(back, error=errors_text(exc.errors()))
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        await sales.update_organization(container.uow(), actor=actor, organization_id=org_id, changes=changes)
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (handlers.InvalidRequest, NotAllowed) as exc:
        return _back(back, error=str(exc))
    return _back(back, done="edited")


def _list(text: str) -> list[str]:
    """Phones or e-mails typed one per line, or separated by commas or semicolons."""
    return [v.strip() for v in re.split(r"[\n,;]", text) if v.strip()]


@router.post("/organizations/{org_id}/contacts")
async def add_contact(org_id: str, request: Request, full_name: str = Form(..., max_length=300),
                      position: str = Form("", max_length=200), phones: str = Form("", max_length=2000),
                      emails: str = Form("", max_length=2000), user: User = Depends(page_user)):
    """A person at this organization: shown to CRM users, never logged, never sent to the ECM."""
    _writer(user)
    container = request.app.state.container
    back = f"/ui/organizations/{org_id}"
    try:
        body = ContactIn.model_validate({"full_name": full_name, "organization_id": org_id,
                                         "position": position.strip() or None, "phones": _list(phones),
                                         "emails": _list(emails)})
    except ValidationError as exc:
        return _back(back, error=errors_text(exc.errors()))
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        await sales.create_contact(container.uow(), actor=actor, **body.model_dump(mode="json"))
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return _back(back, done="contact")


@router.post("/organizations/{org_id}/merge")
async def merge_into(org_id: str, request: Request, into_id: str = Form(..., max_length=36),
                     confirm: str = Form(""), user: User = Depends(page_user)):
    """From the card's duplicate hint: this organization's deals, contacts, activities,
    approvals and history move to the other one, which fills its empty fields from this
    one; this one stays as a pointer. Needs the confirmation box ticked."""
    _writer(user)
    container = request.app.state.container
    back = f"/ui/organizations/{org_id}"
    if not confirm:
        return _back(back, error="tick the box to confirm the merge: it cannot be undone from here")
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        await sales.merge_organizations(container.uow(), actor=actor, organization_id=org_id, into_id=into_id,
                                        correlation_id=correlation_id(request))
    except (handlers.InvalidRequest, handlers.NotFound, NotAllowed) as exc:
        return _back(back, error=str(exc))
    return _back(f"/ui/organizations/{into_id}", done="merged")


_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _amount(text: str) -> Decimal | None:
    """An amount as people type it: "1 200 000,50", "1200000.50" or empty."""
    cleaned = re.sub(r"[\s\u00a0\u202f]", "", text).replace(",", ".")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise handlers.InvalidRequest(f"amount not understood: {text.strip()!r}") from None
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")) or value >= 10 ** 16:
        raise handlers.InvalidRequest(f"amount not understood: {text.strip()!r} (0 or more, at most two decimals)")
    return value


@router.post("/organizations/{org_id}/deals")
async def new_deal(org_id: str, request: Request, title: str = Form(..., max_length=500),
                   amount: str = Form("", max_length=40), currency: str = Form("", max_length=10),
                   user: User = Depends(page_user)):
    """A deal on this organization, at the funnel's first stage; then its page."""
    _writer(user)
    container = request.app.state.container
    back = f"/ui/organizations/{org_id}"
    currency = currency.strip().upper()
    try:
        if not title.strip():
            raise handlers.InvalidRequest("a deal needs a title")
        if currency and not _CURRENCY.match(currency):
            raise handlers.InvalidRequest(f"currency {currency!r} is not a three-letter code such as RUB")
        deal = await handlers.create_deal(container.uow(), user_id=user.id, organization_id=org_id,
                                          title=title.strip(), funnel=container.funnel, amount=_amount(amount),
                                          currency=currency or None)
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except handlers.InvalidRequest as exc:
        return _back(back, error=str(exc))
    return _back(f"/ui/deals/{deal.id}", done="created")


@router.get("/deals/{deal_id}", response_class=HTMLResponse)
async def deal_page(deal_id: str, request: Request, user: User = Depends(page_user)):
    """The deal, its documents with where each one's approval stands, and (for who may
    change the deal) attaching a file, filling a template and sending a document for
    approval: the rep's one action; the ECM does the rest."""
    container = request.app.state.container
    async with container.uow() as uow:
        deal = await uow.deals.get(deal_id)
        if deal is None:
            raise HTTPException(404, f"deal {deal_id} not found")
        org = await uow.organizations.get(deal.organization_id)
        documents = await sales.documents_of(uow, deal_id)
        approvals = await sales.approvals_of(uow, deal_id=deal_id)
        stages = await sales.stage_history(uow, deal_id)
        names = dict((await uow.session.execute(select(tables.users.c.id, tables.users.c.name).where(
            tables.users.c.id.in_({deal.owner_id, *(s["actor_id"] for s in stages)})))).all())
        may_change = user.role in WRITERS
        if may_change:
            try:
                await handlers.check_caller_may_change(uow, user, deal.owner_id, "deal")
            except NotAllowed:
                may_change = False
    return render(request, "deal.html", user, deal=deal, org=org, documents=documents, approvals=approvals,
                  stages=stages, names=names, funnel=container.funnel["stages"], may_change=may_change,
                  templates_available=sales.list_templates(), doc_types=DOC_TYPE_SUGGESTIONS,
                  error=request.query_params.get("error"), done=request.query_params.get("done"))


DOC_TYPE = re.compile(r"^[a-z0-9_\-]{1,64}$")
DOC_TYPE_SUGGESTIONS = ("contract", "commercial_proposal", "invoice", "act", "nda")


def _doc_type(text: str) -> str:
    doc_type = text.strip().lower() or "contract"
    if not DOC_TYPE.match(doc_type):
        raise handlers.InvalidRequest(f"document type {text.strip()!r}: latin letters, digits, _ and - only")
    return doc_type


@router.post("/deals/{deal_id}/documents")
async def deal_upload(deal_id: str, request: Request, file: UploadFile = File(...),
                      doc_type: str = Form("contract", max_length=64), user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    back = f"/ui/deals/{deal_id}"
    try:
        doc_type = _doc_type(doc_type)
        await _check_deal_owner(request, user, deal_id)
        sha256, size = await receive_upload(container.file_store, file, container.settings.max_upload_bytes)
        await handlers.attach_document(
            container.uow(), user_id=user.id, deal_id=deal_id, filename=safe_filename(file.filename),
            content_type=file.content_type or "application/octet-stream", doc_type=doc_type, sha256=sha256,
            size=size)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise
        return _back(back, error=str(exc.detail))
    except handlers.InvalidRequest as exc:
        return _back(back, error=str(exc))
    return _back(back, done="uploaded")


@router.post("/deals/{deal_id}/documents/generate")
async def deal_generate(deal_id: str, request: Request, template: str = Form(..., max_length=100),
                        doc_type: str = Form("contract", max_length=64), request_approval: str = Form(""),
                        user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    back = f"/ui/deals/{deal_id}"
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        doc = await sales.generate_document(
            container.uow(), container.file_store, actor=actor, user_name=user.name, deal_id=deal_id,
            template=template, doc_type=_doc_type(doc_type), max_bytes=container.settings.max_upload_bytes)
        if request_approval:
            await handlers.request_approval(container.uow(), user_id=user.id, caller=user, deal_id=deal_id,
                                            document_id=doc.id, correlation_id=correlation_id(request))
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (handlers.InvalidRequest, NotAllowed) as exc:
        return _back(back, error=str(exc))
    return _back(back, done="requested" if request_approval else "generated")


@router.post("/deals/{deal_id}/approval-requests")
async def deal_request_approval(deal_id: str, request: Request, document_id: str = Form(..., max_length=36),
                                user: User = Depends(page_user)):
    """The rep's one action. Asking again while the document's approval is open changes
    nothing (the open request is the answer)."""
    _writer(user)
    back = f"/ui/deals/{deal_id}"
    try:
        await handlers.request_approval(request.app.state.container.uow(), user_id=user.id, caller=user,
                                        deal_id=deal_id, document_id=document_id,
                                        correlation_id=correlation_id(request))
    except (handlers.NotFound, NotAllowed) as exc:
        return _back(back, error=str(exc))
    return _back(back, done="requested")


@router.get("/documents/{document_id}")
async def document_download(document_id: str, request: Request, _: User = Depends(page_user)):
    """Always a download (Content-Disposition: attachment), never shown inline: an
    uploaded HTML file must not run as a page of the CRM."""
    container = request.app.state.container
    async with container.uow() as uow:
        doc = await uow.documents.get(document_id)
    if doc is None:
        raise HTTPException(404, f"document {document_id} not found")
    return FileResponse(container.file_store.path_for(doc.sha256), media_type=doc.content_type,
                        filename=doc.filename, headers={"X-Content-Type-Options": "nosniff"})


@router.post("/organizations/{org_id}/activities")
async def add_activity(org_id: str, request: Request, kind: str = Form(...), subject: str = Form(..., max_length=500),
                       due_at: str = Form(""), user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    due = None
    if due_at:
        try:
            due = business_day.from_wall_clock(due_at)
        except ValueError:
            return RedirectResponse(f"/ui/organizations/{org_id}?error={quote('due date not understood')}", 303)
    try:
        await sales.create_activity(container.uow(), actor=actor, kind=kind, subject=subject.strip() or kind,
                                    organization_id=org_id, due_at=due)
    except (handlers.InvalidRequest, handlers.NotFound) as exc:
        return RedirectResponse(f"/ui/organizations/{org_id}?error={quote(str(exc))}", status_code=303)
    return RedirectResponse(f"/ui/organizations/{org_id}", status_code=303)


@router.post("/organizations/{org_id}/transfer")
async def transfer(org_id: str, request: Request, new_owner: str = Form(..., max_length=200),
                   move_open_deals: str = Form(""), move_open_activities: str = Form(""),
                   user: User = Depends(page_user)):
    """The same transfer as the API: recorded in history, announced to the ECM."""
    _writer(user)
    container = request.app.state.container
    async with container.uow() as uow:
        new_owner_id = (await uow.session.execute(
            select(tables.users.c.id).where(tables.users.c.name == new_owner.strip()))).scalar()
    try:
        if new_owner_id is None:
            raise handlers.InvalidRequest(f"no user named {new_owner.strip()!r}")
        await handlers.transfer_responsibility(
            container.uow(), actor_id=user.id, actor_role=user.role, organization_id=org_id,
            new_owner_id=new_owner_id, move_open_deals=bool(move_open_deals),
            move_open_activities=bool(move_open_activities), closed_stages=container.funnel["closed"],
            correlation_id=correlation_id(request))
    except (handlers.InvalidRequest, handlers.NotFound, NotAllowed) as exc:
        return RedirectResponse(f"/ui/organizations/{org_id}?error={quote(str(exc))}", status_code=303)
    return RedirectResponse(f"/ui/organizations/{org_id}", status_code=303)


@router.get("/deals", response_class=HTMLResponse)
async def deal_board(request: Request, mine: str = "", user: User = Depends(page_user)):
    container = request.app.state.container
    async with container.uow() as uow:
        board = await sales.deal_board(uow, container.funnel, owner_id=user.id if mine else None)
    return render(request, "deals.html", user, board=board, stages=container.funnel["stages"], mine=mine,
                  error=request.query_params.get("error"))


@router.post("/deals/{deal_id}/stage")
async def move_deal(deal_id: str, request: Request, stage: str = Form(...), back: str = Form(""),
                    user: User = Depends(page_user)):
    """From the board, or from the deal's page (`back=deal`): back to where it was moved."""
    _writer(user)
    target = f"/ui/deals/{deal_id}" if back == "deal" else "/ui/deals"
    container = request.app.state.container
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        await sales.update_deal(container.uow(), actor=actor, deal_id=deal_id, changes={"stage": stage},
                                funnel=container.funnel)
    except (handlers.InvalidRequest, handlers.NotFound, NotAllowed) as exc:
        return _back(target, error=str(exc))
    return _back(target)


@router.get("/my-day", response_class=HTMLResponse)
async def my_day(request: Request, user: User = Depends(page_user)):
    container = request.app.state.container
    async with container.uow() as uow:
        day = await sales.my_day(uow, user_id=user.id)
        notes = await uow.notifications.for_user(user.id, limit=20)
        hook = await sales.notify_hook_of(uow, user.id)
    return render(request, "my_day.html", user, day=day, notifications=notes, hook=hook,
                  error=request.query_params.get("error"), done=request.query_params.get("done"))


@router.post("/me/notify-hook")
async def set_notify_hook(request: Request, notify_hook: str = Form("", max_length=500),
                          user: User = Depends(page_user)):
    """Where reminders also go: a chat webhook or mailto:, as `PUT /api/me/notify-hook`; empty stops it."""
    _writer(user)
    try:
        body = HookIn.model_validate({"notify_hook": notify_hook.strip() or None})
    except ValidationError:
        return _back("/ui/my-day", error="a chat webhook (https://…) or mailto:address, or empty to stop")
    await sales.set_notify_hook(request.app.state.container.uow(), user_id=user.id, hook=body.notify_hook)
    return _back("/ui/my-day", done="hook")


@router.post("/activities/{activity_id}/done")
async def activity_done(activity_id: str, request: Request, user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        await sales.complete_activity(container.uow(), actor=actor, activity_id=activity_id)
    except (handlers.NotFound, NotAllowed) as exc:
        raise HTTPException(403 if isinstance(exc, NotAllowed) else 404, str(exc)) from exc
    return RedirectResponse("/ui/my-day", status_code=303)


# --- leads: quick capture, then convert (contact, organization, deal) or disqualify --------------

LEAD_STATUSES = ("open", "converted", "disqualified")


@router.get("/leads", response_class=HTMLResponse)
async def leads_page(request: Request, status: str = "open", user: User = Depends(page_user)):
    status = status if status in LEAD_STATUSES else "open"
    t = tables.leads
    async with request.app.state.container.uow() as uow:
        rows = [dict(r) for r in (await uow.session.execute(
            select(t).where(t.c.status == status).order_by(t.c.created_at.desc()).limit(500))).mappings()]
    return render(request, "leads.html", user, leads=rows, lead_status=status, statuses=LEAD_STATUSES,
                  error=request.query_params.get("error"), done=request.query_params.get("done"))


@router.post("/leads")
async def new_lead(request: Request, title: str = Form(..., max_length=500),
                   company_name: str = Form("", max_length=500), person_name: str = Form("", max_length=300),
                   phones: str = Form("", max_length=2000), emails: str = Form("", max_length=2000),
                   inn: str = Form("", max_length=20), source: str = Form("", max_length=200),
                   user: User = Depends(page_user)):
    """Nothing but a title is needed; the rest is whatever the rep has at hand."""
    _writer(user)
    container = request.app.state.container
    try:
        body = LeadIn.model_validate({
            "title": title, "company_name": company_name.strip() or None, "person_name": person_name.strip() or None,
            "phones": _list(phones), "emails": _list(emails), "inn": inn.strip() or None,
            "source": source.strip() or None})
    except ValidationError as exc:
        return _back("/ui/leads", error=errors_text(exc.errors()))
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    await sales.create_lead(container.uow(), actor=actor, **body.model_dump())
    return _back("/ui/leads", done="created")


@router.post("/leads/{lead_id}/convert")
async def convert_lead(lead_id: str, request: Request, deal_title: str = Form("", max_length=500),
                       create_deal: str = Form(""), create_contact: str = Form(""),
                       user: User = Depends(page_user)):
    """One action: the organization (an existing one when the INN or the name clearly
    matches), the contact and the deal, as the API converts; then the deal's page, or the
    organization's card without a deal. Missing data never stops it."""
    _writer(user)
    container = request.app.state.container
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        result = await sales.convert_lead(
            container.uow(), actor=actor, lead_id=lead_id, create_contact=bool(create_contact),
            create_deal=bool(create_deal), deal_title=deal_title.strip() or None, funnel=container.funnel)
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (handlers.InvalidRequest, NotAllowed) as exc:
        return _back("/ui/leads", error=str(exc))
    done = "converted_existing" if result["linked_existing_organization"] else "converted"
    if result["deal_id"]:
        return _back(f"/ui/deals/{result['deal_id']}", done=done)
    return _back(f"/ui/organizations/{result['organization_id']}", done=done)


@router.post("/leads/{lead_id}/disqualify")
async def disqualify_lead(lead_id: str, request: Request, reason: str = Form(..., max_length=500),
                          user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    async with container.uow() as uow:
        actor = await sales.actor_for(uow, user)
    try:
        if not reason.strip():
            raise handlers.InvalidRequest("say why the lead is disqualified")
        await sales.disqualify_lead(container.uow(), actor=actor, lead_id=lead_id, reason=reason.strip())
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (handlers.InvalidRequest, NotAllowed) as exc:
        return _back("/ui/leads", error=str(exc))
    return _back("/ui/leads", done="disqualified")


# --- the import wizard: upload -> mapping -> dry run -> apply -> report ------------------------


@router.get("/imports/new", response_class=HTMLResponse)
async def import_upload_form(request: Request, user: User = Depends(page_user)):
    _writer(user)
    return render(request, "import.html", user, job=None, fields=list(imports.FIELDS))


@router.post("/imports")
async def import_upload(request: Request, file: UploadFile = File(...), user: User = Depends(page_user)):
    _writer(user)
    try:
        import_id = await import_jobs.create_import(request.app.state.container, file.file, filename=file.filename,
                                                    user_id=user.id)
    except import_jobs.ImportRefused as exc:
        return render(request, "import.html", user, status=422, job=None, fields=list(imports.FIELDS), error=str(exc))
    return RedirectResponse(f"/ui/imports/{import_id}", status_code=303)


@router.get("/imports/{import_id}", response_class=HTMLResponse)
async def import_page(import_id: str, request: Request, user: User = Depends(page_user)):
    job = await _import_row(request.app.state.container, import_id)
    return render(request, "import.html", user, job=job, fields=list(imports.FIELDS),
                  error=request.query_params.get("error"))


@router.post("/imports/{import_id}/run")
async def import_run(import_id: str, request: Request, action: str = Form(...), user: User = Depends(page_user)):
    """Saves the mapping from the form, then starts the dry run or the apply."""
    _writer(user)
    container = request.app.state.container
    job = await _import_row(container, import_id)
    form = await request.form()
    mapping = {str(i): form.get(f"col{i}") for i in range(len(job["header"])) if form.get(f"col{i}")}
    apply = action == "apply"
    try:
        if apply and mapping != job["mapping"]:
            raise import_jobs.ImportRefused(409, "run the dry run with this mapping first")
        if not apply:
            await import_jobs.set_mapping(container.session_factory, import_id, mapping)
        await import_jobs.start(container, import_id, user_id=user.id, apply=apply)
    except import_jobs.ImportRefused as exc:
        return RedirectResponse(f"/ui/imports/{import_id}?error={quote(str(exc))}", status_code=303)
    return RedirectResponse(f"/ui/imports/{import_id}", status_code=303)


@router.get("/imports/{import_id}/report")
async def import_report(import_id: str, request: Request, user: User = Depends(page_user)):
    from fastapi.responses import FileResponse

    job = await _import_row(request.app.state.container, import_id)
    if job["status"] not in ("dry_run", "applied"):
        raise HTTPException(409, "the report is not ready")
    return FileResponse(job["report_path"], media_type="text/csv", filename=f"import-{import_id}.csv")

