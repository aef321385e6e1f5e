"""Server-rendered pages for ECM staff (FastAPI + Jinja2, no JavaScript): the approver
inbox, the approval card, the steward queue, registry search and the delay-reason
report. Login is a form that takes a user's token and keeps it in an HttpOnly,
SameSite=Strict cookie; every page applies the same rights as the API."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.domain.counterparty import StewardRuleBroken
from ecm_service.entrypoints.api import stream_version
from ecm_service.entrypoints.approvals_api import (
    DECIDERS,
    REPORT_COLUMNS,
    actor_of,
    delay_report_rows,
    inbox_for,
    readable_approval,
)
from ecm_service.entrypoints.originals_api import NUMBER, REGISTER_READERS, register_csv
from ecm_service.entrypoints.registry_api import EditIn
from ecm_service.service_layer import approvals as cases
from ecm_service.service_layer import deputies, documents, originals, steward
from ecm_service.service_layer.approvals import APPROVAL
from ecm_service.service_layer.documents import DOCUMENT
from infra import business_day
from infra.pages import SHARED_TEMPLATES, add_login_routes, back_to, errors_text, page_user_dependency
from infra.users import User
from infra.web import csv_download

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=[Path(__file__).parent / "templates", SHARED_TEMPLATES])
templates.env.filters["local"] = business_day.local_text  # times on the company's clock, its zone named
PAGE_ROLES = ("legal", "finance", "director", "steward", "auditor", "admin")
HOLDERS = ("legal", "admin")  # who puts and releases a legal hold, as in the API
STEWARD_QUEUE_SHOWN = 100
HOME = {"steward": "/ui/steward", "auditor": "/ui/registry", "admin": "/ui/registry"}


page_user = page_user_dependency(PAGE_ROLES)


def render(request: Request, template: str, user: User | None, status: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"user": user, **context}, status_code=status)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", None, status=status, message=message, status_code=status)


add_login_routes(router, templates, roles=PAGE_ROLES, home=lambda user: HOME.get(user.role, "/ui/inbox"))


async def with_actor_names(uow, entries: list[dict]) -> list[dict]:
    """History entries for a page, each with `actor_name`: the ECM user's name for
    "user:<id>"; other actors (the CRM's "crm:<id>", the system's own) as recorded. The
    CRM's people are known here by reference only."""
    names = await user_names(uow, [e["actor"] for e in entries])
    return [{**e, "actor_name": names.get(e["actor"], e["actor"])} for e in entries]


async def user_names(uow, refs: list[str]) -> dict[str, str]:
    """{"user:<id>": name} for the ECM users among `refs` (one statement)."""
    ids = sorted({ref.removeprefix("user:") for ref in refs if ref and ref.startswith("user:")})
    u = tables.users
    rows = (await uow.session.execute(select(u.c.id, u.c.name).where(u.c.id.in_(ids)))).all() if ids else []
    return {f"user:{user_id}": name for user_id, name in rows}


@router.get("/")
async def home(user: User = Depends(page_user)):
    return RedirectResponse(HOME.get(user.role, "/ui/inbox"), status_code=303)


# --- approver inbox and approval card -------------------------------------------------------


@router.get("/inbox", response_class=HTMLResponse)
async def inbox_page(request: Request, user: User = Depends(page_user)):
    container = request.app.state.container
    items = await inbox_for(container, user) if user.role in DECIDERS else []
    async with container.uow() as uow:
        notes = await uow.notifications.for_actor(actor_of(user), limit=20)
        held = originals.with_overdue(await uow.originals.handed_out(holder_id=user.id))
    return render(request, "inbox.html", user, items=items, notifications=notes, held=held)


async def _card_context(request: Request, user: User, approval_id: str) -> dict:
    container = request.app.state.container
    async with container.uow() as uow:
        approval = await readable_approval(uow, container, user, approval_id)
        document = await uow.documents.get(approval.document_id)
        versions = await uow.documents.versions(approval.document_id)
        history = await with_actor_names(uow, await uow.history.of(APPROVAL, approval_id))
        counterparty = await uow.counterparties.get(approval.counterparty_id) if approval.counterparty_id else None
        delays = await uow.delay_reasons.of_approval(approval_id)
        principals = await uow.deputies.principals_of(user.id, business_day.today())
        paper = originals.with_overdue(await uow.originals.of_document(approval.document_id))
        # Where the originals have been: the document's history entries of their steps.
        movements = [e for e in await uow.history.of(DOCUMENT, approval.document_id)
                     if e["action"].startswith("original_")]
        names = await user_names(uow, [e["actor"] for e in movements]
                                 + [e["data"].get(k) for e in movements for k in ("to", "from")])
        staff = await uow.originals.staff() if user.role in HOLDERS else []
    try:
        _, behalf, via_escalation = approval.place_for(actor_of(user), principals)
        can_decide = user.role in DECIDERS
    except Exception:
        behalf, via_escalation, can_decide = None, False, False
    return {"approval": approval, "document": document, "versions": versions, "history": history,
            "counterparty": counterparty,
            "delays": delays, "can_decide": can_decide, "can_hold": user.role in HOLDERS,
            "originals": paper, "staff": staff, "today": business_day.today(), "movements": movements,
            "names": names,
            "on_behalf_of": behalf.name if behalf else None,
            "via_escalation": via_escalation, "codes": container.delay_reasons,
            "now": datetime.now(timezone.utc), "steps": {s.stage_no: s for s in approval.steps}}


@router.get("/approvals/{approval_id}", response_class=HTMLResponse)
async def approval_card(approval_id: str, request: Request, user: User = Depends(page_user)):
    return render(request, "approval.html", user, **await _card_context(request, user, approval_id))


@router.get("/approvals/{approval_id}/sheet", response_class=HTMLResponse)
async def approval_sheet(approval_id: str, request: Request, user: User = Depends(page_user)):
    from ecm_service.entrypoints.sheet_api import COLUMNS, sheet_rows

    approval, rows = await sheet_rows(request, approval_id, user)
    return templates.TemplateResponse(request, "approval_sheet.html", {
        "approval": approval, "columns": COLUMNS, "rows": rows,
        "generated_at": business_day.local_text(datetime.now(timezone.utc), "%Y-%m-%d %H:%M %Z")})


@router.post("/approvals/{approval_id}/decision", response_class=HTMLResponse)
async def decide_from_card(approval_id: str, request: Request, decision: str = Form(...),
                           comment: str = Form("", max_length=5000), reason: str = Form("", max_length=500),
                           user: User = Depends(page_user)):
    if user.role not in DECIDERS:
        raise HTTPException(403, f"role {user.role!r} does not decide on approvals")
    container = request.app.state.container
    try:
        await cases.decide(container.uow(), approval_id=approval_id, actor=actor_of(user), decision=decision,
                           comment=comment.strip() or None, reason=reason.strip() or None)
    except ValueError as exc:  # InvalidDecision: the form is shown again with the message
        context = await _card_context(request, user, approval_id)
        return render(request, "approval.html", user, status=422, error=str(exc), comment=comment, **context)
    return back_to(f"/ui/approvals/{approval_id}", done=decision)


@router.post("/approvals/{approval_id}/legal-hold", response_class=HTMLResponse)
async def legal_hold_from_card(approval_id: str, request: Request, action: str = Form(...),
                               reason: str = Form("", max_length=2000), user: User = Depends(page_user)):
    """Puts the approval's document under legal hold, or releases it, with a reason for
    the history: a held document is never disposed of, whatever its retention says."""
    if user.role not in HOLDERS:
        raise HTTPException(403, "legal staff and admins put and release a legal hold")
    if action not in ("hold", "release"):
        raise HTTPException(422, f"unknown action {action!r}")
    container = request.app.state.container
    async with container.uow() as uow:
        approval = await readable_approval(uow, container, user, approval_id)
    if len(reason.strip()) < 3:
        context = await _card_context(request, user, approval_id)
        return render(request, "approval.html", user, status=422, error="a legal hold needs a reason", **context)
    try:
        await documents.set_legal_hold(container.uow(), document_id=approval.document_id, hold=action == "hold",
                                       user_id=user.id, reason=reason.strip())
    except documents.DocumentGone as exc:
        raise HTTPException(410, str(exc)) from exc
    return back_to(f"/ui/approvals/{approval_id}", done=f"legal_{action}")


async def _original_from_card(request: Request, user: User, approval_id: str, done: str, act) -> HTMLResponse:
    """Runs a paper-original action of the card's document (legal staff, admins, as in the
    API); a refusal shows the card again with the reason."""
    if user.role not in HOLDERS:
        raise HTTPException(403, "legal staff and admins keep the paper originals")
    container = request.app.state.container
    async with container.uow() as uow:
        approval = await readable_approval(uow, container, user, approval_id)
    try:
        await act(container.uow(), approval.document_id)
    except (originals.InvalidOriginal, originals.OriginalConflict) as exc:
        context = await _card_context(request, user, approval_id)
        status = 409 if isinstance(exc, originals.OriginalConflict) else 422
        return render(request, "approval.html", user, status=status, error=str(exc), **context)
    except documents.DocumentGone as exc:
        raise HTTPException(410, str(exc)) from exc
    return back_to(f"/ui/approvals/{approval_id}", done=done)


@router.post("/approvals/{approval_id}/originals", response_class=HTMLResponse)
async def register_original_from_card(approval_id: str, request: Request,
                                      location: str = Form(..., min_length=1, max_length=300),
                                      version_id: str = Form("", max_length=36), user: User = Depends(page_user)):
    return await _original_from_card(
        request, user, approval_id, "original_registered", lambda uow, doc: originals.register(
            uow, document_id=doc, location=location.strip(), version_id=version_id or None, user=user))


@router.post("/approvals/{approval_id}/originals/{number}/hand-out", response_class=HTMLResponse)
async def hand_out_original_from_card(approval_id: str, request: Request, number: int = NUMBER,
                                      to_user_id: str = Form(..., max_length=36), due_back: date = Form(...),
                                      purpose: str = Form(..., min_length=3, max_length=500),
                                      user: User = Depends(page_user)):
    return await _original_from_card(
        request, user, approval_id, "original_handed_out", lambda uow, doc: originals.hand_out(
            uow, document_id=doc, number=number, to_user_id=to_user_id, due_back=due_back, purpose=purpose.strip(),
            user=user))


@router.post("/approvals/{approval_id}/originals/{number}/return", response_class=HTMLResponse)
async def return_original_from_card(approval_id: str, request: Request, number: int = NUMBER,
                                    location: str = Form("", max_length=300), user: User = Depends(page_user)):
    return await _original_from_card(
        request, user, approval_id, "original_returned", lambda uow, doc: originals.take_back(
            uow, document_id=doc, number=number, location=location.strip() or None, user=user))


@router.post("/approvals/{approval_id}/delay-reason", response_class=HTMLResponse)
async def delay_reason_from_card(approval_id: str, request: Request, code: str = Form(...),
                                 text: str = Form("", max_length=2000), user: User = Depends(page_user)):
    container = request.app.state.container
    try:
        await cases.record_delay_reason(container.uow(), approval_id=approval_id, actor=actor_of(user), code=code,
                                        text=text.strip() or None, codes=container.delay_reasons)
    except ValueError as exc:
        context = await _card_context(request, user, approval_id)
        return render(request, "approval.html", user, status=422, error=str(exc), **context)
    return back_to(f"/ui/approvals/{approval_id}", done="delay_reason")


@router.get("/documents/{document_id}/content")
async def download(document_id: str, request: Request, version: int | None = None, user: User = Depends(page_user)):
    # Refusals (403, 404, 410, 500) come back as HTTP errors, which /ui renders as pages.
    return await stream_version(request.app.state.container, user, document_id, version)


# --- deputies: who decides for me while I am away --------------------------------------------


def _deciders_only(user: User) -> None:
    if user.role not in DECIDERS:
        raise HTTPException(403, "deputies are for those who decide on approvals")


@router.get("/deputies", response_class=HTMLResponse)
async def deputies_page(request: Request, user: User = Depends(page_user)):
    """The deputies I named (name one, revoke one) and whom I stand in for, each with its
    range of the company's days and whether it is active now."""
    _deciders_only(user)
    today = business_day.today()
    async with request.app.state.container.uow() as uow:
        rows = await uow.deputies.of_user(user.id)
        people = await deputies.candidates(uow, user_id=user.id, deciders=DECIDERS)
    for row in rows:
        row["state"] = ("revoked" if row["revoked_at"] else "past" if row["ends_on"] < today
                        else "upcoming" if row["starts_on"] > today else "active")
    return render(request, "deputies.html", user, named=[r for r in rows if r["user_id"] == user.id],
                  standing_in=[r for r in rows if r["deputy_id"] == user.id], people=people, today=today,
                  error=request.query_params.get("error"), done=request.query_params.get("done"),
                  filled=request.query_params)


@router.post("/deputies")
async def name_deputy(request: Request, deputy: str = Form(..., max_length=200),
                      starts_on: str = Form(..., max_length=10), ends_on: str = Form(..., max_length=10),
                      user: User = Depends(page_user)):
    _deciders_only(user)

    def refused(message: str) -> RedirectResponse:  # the form comes back as it was filled
        return back_to("/ui/deputies", error=message, deputy=deputy, starts_on=starts_on, ends_on=ends_on)

    try:
        first, last = date.fromisoformat(starts_on), date.fromisoformat(ends_on)
    except ValueError:
        return refused("dates not understood")
    try:
        await deputies.name_deputy(request.app.state.container.uow(), user_id=user.id, deputy_name=deputy.strip(),
                                   starts_on=first, ends_on=last, deciders=DECIDERS)
    except deputies.DeputyRefused as exc:
        return refused(str(exc))
    return back_to("/ui/deputies", done="named")


@router.post("/deputies/{deputy_row_id}/revoke")
async def revoke_deputy(deputy_row_id: str, request: Request, user: User = Depends(page_user)):
    _deciders_only(user)
    try:
        await deputies.revoke_deputy(request.app.state.container.uow(), user_id=user.id, deputy_row_id=deputy_row_id)
    except deputies.NotFound as exc:
        return back_to("/ui/deputies", error=str(exc))
    return back_to("/ui/deputies", done="revoked")


# --- steward queue and registry search --------------------------------------------------------


@router.get("/steward", response_class=HTMLResponse)
async def steward_queue(request: Request, user: User = Depends(page_user), done: str | None = None,
                        error: str | None = None):
    if user.role not in ("steward", "auditor", "admin"):
        raise HTTPException(403, "the steward queue is for the registry's data steward (auditors read it)")
    container = request.app.state.container
    async with container.uow() as uow:
        queue, totals = await uow.counterparties.steward_queue(limit=STEWARD_QUEUE_SHOWN)
        rows = [{**item, "candidates": await steward.candidates_for(uow, item["record"])} for item in queue]
        held = await steward.merges_held_apart(uow)
    return render(request, "steward.html", user, rows=rows, totals=totals, held=held, done=done, error=error)


STEWARD_FIELDS = ("name", "short_name", "legal_form", "inn", "kpp", "ogrn", "country", "vat")


def steward_page(back: str, counterparty_id: str) -> str:
    """Where a steward's form goes back to: the record's card when sent from there, else
    the queue (a fixed choice of two, never a path taken from the form)."""
    return f"/ui/counterparties/{counterparty_id}" if back == "card" else "/ui/steward"


@router.post("/steward/{counterparty_id}/edit")
async def steward_edit(counterparty_id: str, request: Request, user: User = Depends(page_user)):
    """Completes a pending record from the queue (what sales sent is often a bare name),
    or corrects any live record from its card, with a reason for the history; "save and
    verify" verifies it in the same click once its identifiers pass. The API's limits and
    the registry's rules apply."""
    if user.role != "steward":
        raise HTTPException(403, "only the steward changes the registry")
    form = await request.form()
    page = steward_page(str(form.get("back", "")), counterparty_id)
    changes = {k: str(form[k]).strip() or None for k in STEWARD_FIELDS if k in form}
    if changes.get("country"):
        changes["country"] = changes["country"].upper()
    try:
        body = EditIn.model_validate({**changes, "reason": str(form.get("reason", ""))})
    except ValidationError as exc:
        return back_to(page, error=errors_text(exc.errors()))
    container, cid = request.app.state.container, request.state.correlation_id
    try:
        _, diff = await steward.edit(container.uow(), counterparty_id=counterparty_id, user=user, reason=body.reason,
                                     changes=body.model_dump(exclude={"reason"}, exclude_unset=True),
                                     correlation_id=cid)
    except (StewardRuleBroken, steward.NotFound) as exc:
        return back_to(page, error=str(exc))
    if form.get("then") != "verify":
        return back_to(page, done="edit" if diff else "edit: nothing changed")
    try:
        await steward.verify(container.uow(), counterparty_id=counterparty_id, user=user, reason=body.reason,
                             correlation_id=cid)
    except (StewardRuleBroken, steward.NotFound) as exc:
        return back_to(page, error=f"saved, but not verified: {exc}")
    return back_to(page, done="verify")


@router.post("/steward/{counterparty_id}/{action}")
async def steward_action(counterparty_id: str, action: str, request: Request, user: User = Depends(page_user),
                         reason: str = Form("", max_length=2000), other_id: str = Form("", max_length=36),
                         back: str = Form("", max_length=10)):
    if user.role != "steward":
        raise HTTPException(403, "only the steward changes the registry")
    uow, cid, reason = request.app.state.container.uow(), request.state.correlation_id, reason.strip()
    page = steward_page(back, counterparty_id)
    try:
        if action == "verify":
            await steward.verify(uow, counterparty_id=counterparty_id, user=user, reason=reason or None,
                                 correlation_id=cid)
        elif action not in ("reject", "archive", "merge", "not-duplicate"):
            raise HTTPException(404, f"no steward action {action!r}")
        elif len(reason) < 3:
            raise StewardRuleBroken(f"{action.replace('-', ' ')} needs a reason")
        elif action in ("reject", "archive"):
            await getattr(steward, action)(uow, counterparty_id=counterparty_id, user=user, reason=reason,
                                           correlation_id=cid)
        elif action == "merge":
            await steward.merge(uow, counterparty_id=counterparty_id, into_id=other_id.strip(), user=user,
                                reason=reason, correlation_id=cid)
        else:
            await steward.mark_not_duplicate(uow, counterparty_id=counterparty_id, other_id=other_id.strip(),
                                             user=user, reason=reason)
    except (StewardRuleBroken, steward.NotFound) as exc:
        return back_to(page, error=str(exc))
    return back_to(page, done=action)


@router.get("/registry", response_class=HTMLResponse)
async def registry_search(request: Request, q: str = "", status: str = "", user: User = Depends(page_user)):
    async with request.app.state.container.uow() as uow:
        found = await uow.counterparties.search(text=q[:200], status=status or None, limit=200)
    return render(request, "registry.html", user, q=q, status_filter=status, found=found)


# --- the register of paper originals out -------------------------------------------------------


@router.get("/originals", response_class=HTMLResponse)
async def originals_out_page(request: Request, user: User = Depends(page_user)):
    """The office's register of paper originals out of their place: who has which, until
    when, the longest overdue first (the roles of GET /api/originals/handed-out)."""
    if user.role not in REGISTER_READERS:
        raise HTTPException(403, "the register of originals is for legal staff, admins and auditors")
    async with request.app.state.container.uow() as uow:
        rows = originals.with_overdue(await uow.originals.handed_out())
    return render(request, "originals.html", user, rows=rows, late=sum(1 for r in rows if r["overdue_days"]))


@router.get("/originals.csv")
async def originals_out_csv(request: Request, user: User = Depends(page_user)):
    if user.role not in REGISTER_READERS:
        raise HTTPException(403, "the register of originals is for legal staff, admins and auditors")
    async with request.app.state.container.uow() as uow:
        return register_csv(originals.with_overdue(await uow.originals.handed_out()))


# --- delay-reason report ---------------------------------------------------------------------


@router.get("/reports/delays", response_class=HTMLResponse)
async def delay_report(request: Request, user: User = Depends(page_user)):
    if user.role == "steward":
        raise HTTPException(403, "the delay report is for approvers, auditors and admins")
    rows = await delay_report_rows(request.app.state.container)
    return render(request, "delays.html", user, rows=rows, total=sum(r["count"] for r in rows))


@router.get("/reports/delays.csv")
async def delay_report_csv(request: Request, user: User = Depends(page_user)):
    if user.role == "steward":
        raise HTTPException(403, "the delay report is for approvers, auditors and admins")
    return csv_download(await delay_report_rows(request.app.state.container), REPORT_COLUMNS, "delay-reasons.csv")


# --- the auditors' reconciliation report --------------------------------------------------------


@router.get("/reconciliation", response_class=HTMLResponse)
async def reconciliation_page(request: Request, state: str = "", run: str = "", user: User = Depends(page_user)):
    from ecm_service.service_layer import reconciliation as rec

    if user.role not in ("auditor", "admin", "steward"):
        raise HTTPException(403, "the reconciliation report is for auditors, admins and the steward")
    async with request.app.state.container.uow() as uow:
        current = await rec.get_run(uow, run) if run else await rec.latest_run(uow)
        rows = await rec.report_rows(uow, current["id"], state=state or None, limit=500) if current else []
        counts = await rec.state_counts(uow, current["id"]) if current else {}
        snapshots = []
        if current:
            t = tables.report_snapshots
            snapshots = [dict(r) for r in (await uow.session.execute(
                select(t).where(t.c.run_id == current["id"]).order_by(t.c.created_at.desc()))).mappings()]
    return render(request, "reconciliation.html", user, run=current, rows=rows, counts=counts, state=state,
                  snapshots=snapshots)


@router.get("/reconciliation/export.{kind}")
async def reconciliation_export(kind: str, request: Request, state: str = "", run: str = "",
                                user: User = Depends(page_user)):

    from ecm_service.service_layer import reconciliation as rec

    if user.role not in ("auditor", "admin", "steward") or kind not in ("csv", "xlsx"):
        raise HTTPException(403 if kind in ("csv", "xlsx") else 404, "not available")
    async with request.app.state.container.uow() as uow:
        current = await rec.get_run(uow, run) if run else await rec.latest_run(uow)
        if current is None:
            raise HTTPException(404, "no reconciliation run yet")
        rows = await rec.report_rows(uow, current["id"], state=state or None)
    body = rec.report_csv(rows) if kind == "csv" else rec.report_xlsx(rows)
    media = "text/csv; charset=utf-8" if kind == "csv" else \
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return Response(body, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="reconciliation.{kind}"'})
