"""Pages for sales' deals and leads: a deal made on the organization's card, the deal's
page (its documents, attaching a file or filling a template, the one action that sends a
document for approval, a new version of a document returned for changes, where each
approval stands, stage moves), documents downloaded as attachments, and leads captured,
converted or disqualified. Same rules as the API."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import ValidationError
from sqlalchemy import select

from crm_service.adapters import tables
from crm_service.domain.rights import NotAllowed
from crm_service.entrypoints.api import _receive_deal_file
from crm_service.entrypoints.pages import WRITERS, _list, _writer, page_user, render
from crm_service.entrypoints.sales_api import LeadIn, _actor
from crm_service.service_layer import handlers, sales
from infra.pages import back_to, errors_text
from infra.users import User
from infra.web import correlation_id

router = APIRouter(prefix="/ui", include_in_schema=False)


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
    # The size before quantize: quantizing 1e30 to cents overflows the context (it was a 500).
    if not value.is_finite() or value < 0 or value >= 10 ** 16 or value != value.quantize(Decimal("0.01")):
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
        return back_to(back, error=str(exc))
    return back_to(f"/ui/deals/{deal.id}", done="created")


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
        documents = await sales.documents_of(uow, deal_id, unanswered_after=container.unanswered_after)
        approvals = await sales.approvals_of(uow, deal_id=deal_id, unanswered_after=container.unanswered_after)
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
        received = await _receive_deal_file(request, user, deal_id, file)
        await handlers.attach_document(container.uow(), user_id=user.id, deal_id=deal_id, doc_type=doc_type,
                                       **received)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise
        return back_to(back, error=str(exc.detail))
    except handlers.InvalidRequest as exc:
        return back_to(back, error=str(exc))
    return back_to(back, done="uploaded")


@router.post("/deals/{deal_id}/documents/{document_id}/versions")
async def deal_document_version(deal_id: str, document_id: str, request: Request, file: UploadFile = File(...),
                                user: User = Depends(page_user)):
    """A new file for a document: the one the ECM returned for changes goes back to its
    approval with it (handlers.add_document_version)."""
    _writer(user)
    container = request.app.state.container
    back = f"/ui/deals/{deal_id}"
    try:
        received = await _receive_deal_file(request, user, deal_id, file)
        _, sent_to, created = await handlers.add_document_version(
            container.uow(), user_id=user.id, caller=user, deal_id=deal_id, document_id=document_id,
            correlation_id=correlation_id(request), **received)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise
        return back_to(back, error=str(exc.detail))
    except (handlers.NotFound, NotAllowed, handlers.Conflict) as exc:
        return back_to(back, error=str(exc))
    return back_to(back, done="version_sent" if sent_to else "version_added" if created else "version_same")


@router.post("/deals/{deal_id}/documents/generate")
async def deal_generate(deal_id: str, request: Request, template: str = Form(..., max_length=100),
                        doc_type: str = Form("contract", max_length=64), request_approval: str = Form(""),
                        user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    back = f"/ui/deals/{deal_id}"
    actor = await _actor(request, user)
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
        return back_to(back, error=str(exc))
    return back_to(back, done="requested" if request_approval else "generated")


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
    except (handlers.NotFound, NotAllowed, handlers.Conflict) as exc:
        return back_to(back, error=str(exc))
    return back_to(back, done="requested")


@router.post("/approval-requests/{request_id}/withdraw")
async def deal_withdraw_approval(request_id: str, request: Request, reason: str = Form("", max_length=500),
                                 user: User = Depends(page_user)):
    """Takes an approval request back (handlers.withdraw_approval_request), then back to
    its deal's page, which says so."""
    _writer(user)
    container = request.app.state.container
    async with container.uow() as uow:
        found = await uow.approval_requests.get(request_id)
    if found is None:
        raise HTTPException(404, f"approval request {request_id} not found")
    back = f"/ui/deals/{found.deal_id}"
    try:
        await handlers.withdraw_approval_request(container.uow(), user_id=user.id, caller=user,
                                                 request_id=request_id, reason=reason,
                                                 correlation_id=correlation_id(request))
    except (handlers.NotFound, handlers.InvalidRequest, NotAllowed, handlers.Conflict) as exc:
        return back_to(back, error=str(exc))
    return back_to(back, done="withdrawn")


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
        return back_to("/ui/leads", error=errors_text(exc.errors()))
    actor = await _actor(request, user)
    await sales.create_lead(container.uow(), actor=actor, **body.model_dump())
    return back_to("/ui/leads", done="created")


@router.post("/leads/{lead_id}/convert")
async def convert_lead(lead_id: str, request: Request, deal_title: str = Form("", max_length=500),
                       create_deal: str = Form(""), create_contact: str = Form(""),
                       user: User = Depends(page_user)):
    """One action: the organization (an existing one when the INN or the name clearly
    matches), the contact and the deal, as the API converts; then the deal's page, or the
    organization's card without a deal. Missing data never stops it."""
    _writer(user)
    container = request.app.state.container
    actor = await _actor(request, user)
    try:
        result = await sales.convert_lead(
            container.uow(), actor=actor, lead_id=lead_id, create_contact=bool(create_contact),
            create_deal=bool(create_deal), deal_title=deal_title.strip() or None, funnel=container.funnel)
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (handlers.InvalidRequest, NotAllowed) as exc:
        return back_to("/ui/leads", error=str(exc))
    done = "converted_existing" if result["linked_existing_organization"] else "converted"
    if result["deal_id"]:
        return back_to(f"/ui/deals/{result['deal_id']}", done=done)
    return back_to(f"/ui/organizations/{result['organization_id']}", done=done)


@router.post("/leads/{lead_id}/disqualify")
async def disqualify_lead(lead_id: str, request: Request, reason: str = Form(..., max_length=500),
                          user: User = Depends(page_user)):
    _writer(user)
    container = request.app.state.container
    actor = await _actor(request, user)
    try:
        if not reason.strip():
            raise handlers.InvalidRequest("say why the lead is disqualified")
        await sales.disqualify_lead(container.uow(), actor=actor, lead_id=lead_id, reason=reason.strip())
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (handlers.InvalidRequest, NotAllowed) as exc:
        return back_to("/ui/leads", error=str(exc))
    return back_to("/ui/leads", done="disqualified")
