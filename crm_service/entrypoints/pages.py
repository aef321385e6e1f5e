"""Pages for sales (FastAPI + Jinja2, no JavaScript): organizations with search and
filters, the organization card (edit, contacts, merge, activities, transfer, approvals,
timeline), the deal board, the import wizard and my day; deals and leads are in
deal_pages. Same rights as the API."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select

from crm_service.adapters import tables
from crm_service.domain.rights import NotAllowed
from crm_service.entrypoints.sales_api import (
    ContactIn,
    HookIn,
    OrganizationPatch,
    _actor,
    _import_row,
    organization_card,
)
from crm_service.service_layer import handlers, import_jobs, imports, sales
from infra import business_day
from infra.pages import SHARED_TEMPLATES, add_login_routes, back_to, errors_text, page_user_dependency
from infra.users import User
from infra.web import correlation_id

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=[Path(__file__).parent / "templates", SHARED_TEMPLATES])
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
    return back_to(f"/ui/organizations/{org.id}", created="1")


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
        return back_to(back, error=errors_text(exc.errors()))
    actor = await _actor(request, user)
    try:
        await sales.update_organization(container.uow(), actor=actor, organization_id=org_id, changes=changes)
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (handlers.InvalidRequest, NotAllowed) as exc:
        return back_to(back, error=str(exc))
    return back_to(back, done="edited")


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
        return back_to(back, error=errors_text(exc.errors()))
    actor = await _actor(request, user)
    try:
        await sales.create_contact(container.uow(), actor=actor, **body.model_dump(mode="json"))
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return back_to(back, done="contact")


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
        return back_to(back, error="tick the box to confirm the merge: it cannot be undone from here")
    actor = await _actor(request, user)
    try:
        await sales.merge_organizations(container.uow(), actor=actor, organization_id=org_id, into_id=into_id,
                                        correlation_id=correlation_id(request))
    except (handlers.InvalidRequest, handlers.NotFound, NotAllowed) as exc:
        return back_to(back, error=str(exc))
    return back_to(f"/ui/organizations/{into_id}", done="merged")


@router.post("/organizations/{org_id}/activities")
async def add_activity(org_id: str, request: Request, kind: str = Form(...), subject: str = Form(..., max_length=500),
                       due_at: str = Form(""), user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    actor = await _actor(request, user)
    due = None
    if due_at:
        try:
            due = business_day.from_wall_clock(due_at)
        except ValueError:
            return back_to(f"/ui/organizations/{org_id}", error="due date not understood")
    try:
        await sales.create_activity(container.uow(), actor=actor, kind=kind, subject=subject.strip() or kind,
                                    organization_id=org_id, due_at=due)
    except (handlers.InvalidRequest, handlers.NotFound) as exc:
        return back_to(f"/ui/organizations/{org_id}", error=str(exc))
    return back_to(f"/ui/organizations/{org_id}")


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
        return back_to(f"/ui/organizations/{org_id}", error=str(exc))
    return back_to(f"/ui/organizations/{org_id}")


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
    actor = await _actor(request, user)
    try:
        await sales.update_deal(container.uow(), actor=actor, deal_id=deal_id, changes={"stage": stage},
                                funnel=container.funnel)
    except (handlers.InvalidRequest, handlers.NotFound, NotAllowed) as exc:
        return back_to(target, error=str(exc))
    return back_to(target)


@router.get("/my-day", response_class=HTMLResponse)
async def my_day(request: Request, user: User = Depends(page_user)):
    container = request.app.state.container
    async with container.uow() as uow:
        day = await sales.my_day(uow, user_id=user.id, unanswered_after=container.unanswered_after)
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
        return back_to("/ui/my-day", error="a chat webhook (https://…) or mailto:address, or empty to stop")
    await sales.set_notify_hook(request.app.state.container.uow(), user_id=user.id, hook=body.notify_hook)
    return back_to("/ui/my-day", done="hook")


@router.post("/activities/{activity_id}/done")
async def activity_done(activity_id: str, request: Request, user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    actor = await _actor(request, user)
    try:
        await sales.complete_activity(container.uow(), actor=actor, activity_id=activity_id)
    except (handlers.NotFound, NotAllowed) as exc:
        raise HTTPException(403 if isinstance(exc, NotAllowed) else 404, str(exc)) from exc
    return back_to("/ui/my-day")


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
    return back_to(f"/ui/imports/{import_id}")


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
        return back_to(f"/ui/imports/{import_id}", error=str(exc))
    return back_to(f"/ui/imports/{import_id}")


@router.get("/imports/{import_id}/report")
async def import_report(import_id: str, request: Request, user: User = Depends(page_user)):

    job = await _import_row(request.app.state.container, import_id)
    if job["status"] not in ("dry_run", "applied"):
        raise HTTPException(409, "the report is not ready")
    return FileResponse(job["report_path"], media_type="text/csv", filename=f"import-{import_id}.csv")

