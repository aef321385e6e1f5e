"""CRM HTTP API: translate requests, hand off to handlers, shape responses."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from crm_service.domain.hints import identifier_hints
from crm_service.domain.model import unanswered
from crm_service.domain.rights import NotAllowed
from crm_service.service_layer import handlers
from crm_service.service_layer.sales import approvals_of, documents_of, duplicate_hints, link_text
from infra.users import User
from infra.web import correlation_id, receive_upload, require_roles, safe_filename
from schemas.crm_events import Address

router = APIRouter(prefix="/api")

SALES = ("sales", "manager", "admin")
READERS = ("sales", "manager", "admin", "auditor")


class OrganizationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=500)
    inn: str | None = Field(None, max_length=20)
    kpp: str | None = Field(None, max_length=20)
    ogrn: str | None = Field(None, max_length=20)
    legal_form: str | None = Field(None, max_length=100)
    country: str | None = Field(None, min_length=2, max_length=2)
    addresses: list[Address] = Field(default_factory=list, max_length=20)
    phones: list[str] = Field(default_factory=list, max_length=20)
    emails: list[str] = Field(default_factory=list, max_length=20)
    website: str | None = Field(None, max_length=300)
    activity_type: str | None = Field(None, max_length=200)
    region: str | None = Field(None, max_length=200)
    org_group: str | None = Field(None, max_length=200)
    category: str | None = Field(None, max_length=200)
    lead_source: str | None = Field(None, max_length=200)
    notes: str | None = Field(None, max_length=10000)


class OrganizationOut(BaseModel):
    id: str
    name: str
    inn: str | None
    kpp: str | None
    ogrn: str | None
    legal_form: str | None
    country: str | None
    addresses: list[Address]
    phones: list[str] = []
    emails: list[str] = []
    website: str | None = None
    activity_type: str | None = None
    region: str | None = None
    org_group: str | None = None
    category: str | None = None
    lead_source: str | None = None
    notes: str | None = None
    owner_id: str | None
    created_at: datetime
    updated_at: datetime | None = None
    merged_into: str | None = None
    registry: dict | None
    # "verified in the registry as ООО «Ромашка»": the registry's word, never a question.
    link_text: str = ""
    hints: list[str]
    # Possible duplicates (same INN or a similar name): a hint, never a refusal.
    duplicates: list[dict] = []
    # Where the CRM's INN, KPP or OGRN differs from the verified registry record: shown only.
    registry_differences: list[dict] = []


class DealIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    organization_id: str = Field(min_length=1, max_length=36)
    title: str = Field(min_length=1, max_length=500)
    amount: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=2)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    expected_close_date: date | None = None
    probability: int | None = Field(None, ge=0, le=100)


class ApprovalView(BaseModel):
    id: str
    status: str
    stage: str | None
    due_at: datetime | None = None
    overdue: bool = False
    delay_reason_code: str | None = None
    reason: str | None
    document_id: str
    requested_at: datetime
    updated_at: datetime | None
    # The ECM has reported nothing about it for CRM_UNANSWERED_AFTER_MINUTES: its delivery
    # is held up on the way (it is kept, and goes on once the way is clear).
    unanswered: bool = False


class DealOut(BaseModel):
    id: str
    organization_id: str
    title: str
    stage: str
    owner_id: str
    created_at: datetime
    amount: Decimal | None = None
    currency: str | None = None
    expected_close_date: date | None = None
    probability: int | None = None
    closed_at: datetime | None = None
    approval: ApprovalView | None = None
    approvals: list[dict] = []


class DocumentOut(BaseModel):
    id: str
    deal_id: str
    filename: str
    content_type: str
    doc_type: str
    size: int
    sha256: str
    created_at: datetime
    version_no: int = Field(1, description="1 for the first file; each new version of the document adds one")


class DocumentVersionOut(DocumentOut):
    created: bool = Field(description="false when the file was the document's current one (nothing changed)")
    sent_to_approval: str | None = Field(
        description="the approval request the new version went to (its approval was with the ECM, under way or "
                    "returned for changes); null when none was open")


class ApprovalRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document_id: str = Field(min_length=1, max_length=36)


class Accepted(BaseModel):
    id: str
    status: str


def _org_out(org, duplicates=()) -> OrganizationOut:
    registry = None
    if org.registry_id:
        registry = {"id": org.registry_id, "status": org.registry_status, "legal_name": org.registry_name}
    return OrganizationOut(
        **{k: getattr(org, k) for k in OrganizationOut.model_fields
           if k not in ("registry", "hints", "duplicates", "link_text", "registry_differences")},
        registry=registry, link_text=link_text(org), registry_differences=org.registry_differences(),
        hints=identifier_hints(inn=org.inn, kpp=org.kpp, ogrn=org.ogrn), duplicates=list(duplicates),
    )


def _approval_view(request, unanswered_after: timedelta) -> ApprovalView:
    return ApprovalView(
        id=request.id, status=request.status, stage=request.stage, due_at=request.due_at, overdue=request.overdue,
        delay_reason_code=request.delay_reason_code, reason=request.reason, document_id=request.document_id,
        requested_at=request.requested_at, updated_at=request.updated_at,
        unanswered=unanswered(status=request.status, revision=request.revision, requested_at=request.requested_at,
                              now=datetime.now(timezone.utc), after=unanswered_after),
    )


def refusal(exc: Exception) -> HTTPException:
    """A handler's refusal as the API answers it."""
    if isinstance(exc, handlers.NotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, NotAllowed):
        return HTTPException(403, str(exc))
    if isinstance(exc, handlers.Conflict):
        return HTTPException(409, str(exc))
    return HTTPException(422, str(exc))


REFUSALS = (handlers.NotFound, NotAllowed, handlers.InvalidRequest, handlers.Conflict)


async def answering(coro):
    """Awaits a handler; its refusals become the API's 4xx (`refusal`)."""
    try:
        return await coro
    except REFUSALS as exc:
        raise refusal(exc) from exc


def _container(request: Request):
    return request.app.state.container


async def _receive_deal_file(request: Request, user: User, deal_id: str, file: UploadFile) -> dict:
    """A file for one of the deal's documents, from someone who may change the deal
    (checked before a byte is stored): its safe name, content type, sha256 and size."""
    container = _container(request)
    await _check_deal_owner(request, user, deal_id)
    sha256, size = await receive_upload(container.file_store, file, container.settings.max_upload_bytes)
    return {"filename": safe_filename(file.filename), "content_type": file.content_type or "application/octet-stream",
            "sha256": sha256, "size": size}


async def _check_deal_owner(request: Request, user: User, deal_id: str) -> None:
    """Documents and approval requests are added by the deal's owner, their team's manager or an admin."""
    async with _container(request).uow() as uow:
        deal = await uow.deals.get(deal_id)
        if deal is None:
            raise HTTPException(404, f"deal {deal_id} not found")
        try:
            await handlers.check_caller_may_change(uow, user, deal.owner_id, "deal")
        except NotAllowed as exc:
            raise HTTPException(403, str(exc)) from exc


@router.post("/organizations", status_code=201, response_model=OrganizationOut)
async def create_organization(body: OrganizationIn, request: Request, user: User = Depends(require_roles(*SALES))):
    """Only the name is required; identifiers that look wrong come back as hints, and
    similar organizations as possible duplicates. Nothing here refuses a save."""
    container = _container(request)
    org = await handlers.create_organization(container.uow(), user_id=user.id,
                                             **body.model_dump(exclude_none=True, mode="json"))
    async with container.uow() as uow:
        duplicates = await duplicate_hints(uow, name=org.name, inn=org.inn, exclude_id=org.id)
    return _org_out(org, duplicates)


@router.get("/organizations/{org_id}", response_model=OrganizationOut)
async def get_organization(org_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        org = await uow.organizations.get(org_id)
        if org is None:
            raise HTTPException(404, f"organization {org_id} not found")
        duplicates = await duplicate_hints(uow, name=org.name, inn=org.inn, exclude_id=org.id)
    return _org_out(org, duplicates)


@router.post("/deals", status_code=201, response_model=DealOut)
async def create_deal(body: DealIn, request: Request, user: User = Depends(require_roles(*SALES))):
    try:
        deal = await handlers.create_deal(_container(request).uow(), user_id=user.id,
                                          funnel=_container(request).funnel, **body.model_dump())
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return DealOut(**deal.__dict__)


@router.get("/deals/{deal_id}", response_model=DealOut)
async def get_deal(deal_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        deal = await uow.deals.get(deal_id)
        approval = await uow.approval_requests.latest_for_deal(deal_id) if deal else None
        after = _container(request).unanswered_after
        approvals = await approvals_of(uow, deal_id=deal_id, unanswered_after=after) if deal else []
    if deal is None:
        raise HTTPException(404, f"deal {deal_id} not found")
    return DealOut(**deal.__dict__, approval=_approval_view(approval, after) if approval else None,
                   approvals=[_public_approval(a) for a in approvals])


class DealDocumentOut(DocumentOut):
    approval: dict | None = Field(description="its latest approval request as the ECM reports it; null if never sent")
    may_request: bool = Field(description="true unless a request of it is still open")


@router.get("/deals/{deal_id}/documents", response_model=list[DealDocumentOut],
            summary="The deal's documents, newest first, each with where its approval stands")
async def deal_documents(deal_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        if await uow.deals.get(deal_id) is None:
            raise HTTPException(404, f"deal {deal_id} not found")
        documents = await documents_of(uow, deal_id, unanswered_after=_container(request).unanswered_after)
    return [{**d, "approval": _public_approval(d["approval"]) if d["approval"] else None} for d in documents]


def _public_approval(row: dict) -> dict:
    """The sales view of one approval: what the ECM reported, never its internal comments."""
    return {k: row[k] for k in ("id", "deal_id", "deal_title", "document_id", "filename", "doc_type", "status",
                                "stage", "due_at", "overdue", "delay_reason_code", "reason", "requested_at",
                                "updated_at", "unanswered")}


@router.post("/deals/{deal_id}/documents", status_code=201, response_model=DocumentOut)
async def upload_document(
    deal_id: str,
    request: Request,
    file: UploadFile = File(...),
    doc_type: str = Form("contract", min_length=1, max_length=64, pattern=r"^[a-z0-9_\-]+$"),
    user: User = Depends(require_roles(*SALES)),
):
    received = await _receive_deal_file(request, user, deal_id, file)
    try:
        doc = await handlers.attach_document(_container(request).uow(), user_id=user.id, deal_id=deal_id,
                                             doc_type=doc_type, **received)
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return DocumentOut(**doc.__dict__)


@router.post("/deals/{deal_id}/documents/{document_id}/versions", response_model=DocumentVersionOut,
             responses={201: {"description": "stored as the document's next version"},
                        200: {"description": "the document's current file already (nothing changed)"},
                        409: {"description": "an earlier version's file while the approval is with the ECM"}},
             summary="A new version of a deal document (one returned for changes, say)")
async def upload_document_version(
    deal_id: str,
    document_id: str,
    request: Request,
    file: UploadFile = File(...),
    user: User = Depends(require_roles(*SALES)),
):
    """The earlier version is kept. If the document's approval is with the ECM (under way,
    or returned for changes) the new version goes to it at once: the ECM stores it as the
    next version of the same document and the approval goes on from the stages its
    route's policy names; its status follows here as before."""
    received = await _receive_deal_file(request, user, deal_id, file)
    doc, sent_to, created = await answering(handlers.add_document_version(
        _container(request).uow(), user_id=user.id, caller=user, deal_id=deal_id, document_id=document_id,
        correlation_id=correlation_id(request), **received))
    body = DocumentVersionOut(**doc.__dict__, created=created, sent_to_approval=sent_to.id if sent_to else None)
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/documents/{document_id}/content")
async def document_content(
    document_id: str, request: Request, sha256: str | None = Query(None, pattern=r"^[0-9a-f]{64}$",
                                                                   description="an earlier version, by its hash"),
    _: User = Depends(require_roles("sales", "manager", "admin", "auditor", "integration"))
):
    """The document's current file, or with `sha256` the version of it with that hash
    (the bridge asks so: an approval request names the file it was sent with)."""
    container = _container(request)
    async with container.uow() as uow:
        doc = await uow.documents.get(document_id)
        if doc is None:
            raise HTTPException(404, f"document {document_id} not found")
        file = {"filename": doc.filename, "content_type": doc.content_type, "sha256": doc.sha256}
        if sha256 and sha256 != doc.sha256:
            file = next((v for v in await uow.documents.versions(document_id) if v["sha256"] == sha256), None)
            if file is None:
                raise HTTPException(404, f"document {document_id} has no version with sha256 {sha256}")
    return FileResponse(
        container.file_store.path_for(file["sha256"]), media_type=file["content_type"], filename=file["filename"],
        headers={"X-Content-SHA256": file["sha256"]},
    )


CONTENTS_MAX_DOCUMENTS = 200


class ContentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=CONTENTS_MAX_DOCUMENTS)


def _read_all(paths) -> list[bytes]:
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


@router.post("/documents/contents", summary="The bytes of many documents in one answer (integrations)",
             response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "the documents' bytes one after another, in the order asked; "
                                             "X-Content-Sizes and X-Content-SHA256 list each one's size "
                                             "and hash, comma-separated"}})
async def documents_contents(
    body: ContentsIn, request: Request,
    _: User = Depends(require_roles("sales", "manager", "admin", "auditor", "integration"))
):
    """GET /api/documents/{id}/content for many small documents at once: 404 naming the
    ids that do not exist, 413 when together they exceed the upload limit (ask for fewer,
    or fetch the large ones one by one)."""
    container = _container(request)
    async with container.uow() as uow:
        found = await uow.documents.get_many(list(dict.fromkeys(body.ids)))
    missing = [i for i in body.ids if i not in found]
    if missing:
        raise HTTPException(404, f"documents not found: {', '.join(missing[:20])}")
    docs = [found[i] for i in body.ids]
    limit = container.settings.max_upload_bytes
    if sum(doc.size for doc in docs) > limit:
        raise HTTPException(413, f"together these documents exceed {limit} bytes; ask for fewer at a time")
    contents = await run_in_threadpool(_read_all, [container.file_store.path_for(doc.sha256) for doc in docs])
    return Response(b"".join(contents), media_type="application/octet-stream", headers={
        "X-Content-Sizes": ",".join(str(len(c)) for c in contents),
        "X-Content-SHA256": ",".join(doc.sha256 for doc in docs)})


@router.post("/deals/{deal_id}/approval-requests", status_code=202, response_model=Accepted)
async def request_approval(
    deal_id: str, body: ApprovalRequestIn, request: Request, user: User = Depends(require_roles(*SALES))
):
    approval = await answering(handlers.request_approval(
        _container(request).uow(), user_id=user.id, caller=user, deal_id=deal_id,
        document_id=body.document_id, correlation_id=correlation_id(request)))
    return Accepted(id=approval.id, status=approval.status)


class WithdrawalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="why; the approvers in the ECM see it")


@router.post("/approval-requests/{request_id}/withdraw", response_model=ApprovalView,
             summary="Take an approval request back (who may change the deal)")
async def withdraw_approval_request(request_id: str, body: WithdrawalIn, request: Request,
                                    user: User = Depends(require_roles(*SALES))):
    withdrawn = await answering(handlers.withdraw_approval_request(
        _container(request).uow(), user_id=user.id, caller=user, request_id=request_id, reason=body.reason,
        correlation_id=correlation_id(request)))
    return _approval_view(withdrawn, _container(request).unanswered_after)


@router.get("/approval-requests/{request_id}", response_model=ApprovalView)
async def get_approval_request(request_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        approval = await uow.approval_requests.get(request_id)
    if approval is None:
        raise HTTPException(404, f"approval request {request_id} not found")
    return _approval_view(approval, _container(request).unanswered_after)


class Hop(BaseModel):
    hop: str
    at: datetime | None
    event_id: str | None = None
    status: str | None = None
    stage: str | None = None
    revision: int | None = None
    note: str | None = None


class Trace(BaseModel):
    id: str
    status: str
    stage: str | None
    registry_approval_id: str | None
    hops: list[Hop]


@router.get("/approval-requests/{request_id}/trace", response_model=Trace,
            summary="Where is approval request X: its hops and their times")
async def trace_approval_request(request_id: str, request: Request,
                                 _: User = Depends(require_roles(*READERS))):
    try:
        return await handlers.trace_approval_request(_container(request).uow(), request_id)
    except handlers.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_owner_id: str = Field(min_length=1, max_length=36)
    move_open_deals: bool = True


class TransferOut(BaseModel):
    organization_id: str
    previous_owner_id: str
    new_owner_id: str
    moved_deal_ids: list[str]
    transferred_at: datetime


@router.post("/organizations/{org_id}/transfer", response_model=TransferOut,
             summary="Transfer responsibility for an organization (and its open deals)")
async def transfer_organization(org_id: str, body: TransferIn, request: Request,
                                user: User = Depends(require_roles(*SALES))):
    return await answering(handlers.transfer_responsibility(
        _container(request).uow(), actor_id=user.id, actor_role=user.role, organization_id=org_id,
        new_owner_id=body.new_owner_id, move_open_deals=body.move_open_deals,
        closed_stages=_container(request).funnel["closed"], correlation_id=correlation_id(request)))


@router.get("/organizations/{org_id}/history")
async def organization_history(org_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    async with _container(request).uow() as uow:
        if await uow.organizations.get(org_id) is None:
            raise HTTPException(404, f"organization {org_id} not found")
        return await uow.organizations.history(org_id)


@router.get("/notifications", summary="My notifications, newest first")
async def my_notifications(request: Request, user: User = Depends(require_roles(*SALES))):
    async with _container(request).uow() as uow:
        return await uow.notifications.for_user(user.id)


@router.get("/me")
async def me(user: User = Depends(require_roles(*READERS))):
    return {"id": user.id, "name": user.name, "role": user.role}
