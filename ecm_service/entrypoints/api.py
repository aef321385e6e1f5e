"""ECM HTTP API for approvers, the steward, auditors and integrations."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.domain.approval import ApprovalClosed, DecisionNotAllowed
from ecm_service.service_layer import approvals as approval_cases
from ecm_service.service_layer.approvals import APPROVAL
from ecm_service.service_layer.documents import DOCUMENT, store_version
from ecm_service.service_layer.registry import COUNTERPARTY
from infra.users import User
from infra.web import receive_upload, require_roles
from schemas.common import ExternalRef

router = APIRouter(prefix="/api")

STAFF = ("legal", "finance", "director", "steward", "auditor", "admin", "integration")
UPLOADERS = ("legal", "finance", "director", "admin", "integration")
APPROVERS = ("legal", "finance", "director")


def _container(request: Request):
    return request.app.state.container


def parse_external_ref(text: str) -> ExternalRef:
    try:
        return ExternalRef.parse(text)
    except ValueError as exc:
        raise HTTPException(422, "external_ref must look like <system>:<id>, e.g. crm:42") from exc


class CounterpartyOut(BaseModel):
    id: str
    name: str
    status: str
    inn: str | None
    kpp: str | None
    ogrn: str | None
    legal_form: str | None
    country: str | None
    quality_flags: list[str]
    addresses: list[dict]
    short_name: str | None = None
    vat: str | None = None
    normalized_name: str | None = None
    merged_into: str | None = None
    external_refs: list[ExternalRef]
    created_at: datetime
    updated_at: datetime


async def _listed_ids(uow, table, entity_type: str, *, external_ref: str | None, limit: int,
                      status: str | None = None) -> list[str]:
    """Ids for a list endpoint, oldest first: all, or the one an external ref names."""
    query = select(table.c.id).order_by(table.c.created_at).limit(limit)
    if external_ref is not None:
        found = await uow.external_refs.find(entity_type, parse_external_ref(external_ref))
        query = query.where(table.c.id.in_([found] if found else []))
    if status:
        query = query.where(table.c.status == status)
    return list((await uow.session.execute(query)).scalars())


@router.get("/counterparties", response_model=list[CounterpartyOut])
async def list_counterparties(
    request: Request,
    external_ref: str | None = Query(None, description="e.g. crm:<organization id>"),
    status: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    _: User = Depends(require_roles(*STAFF)),
):
    async with _container(request).uow() as uow:
        ids = await _listed_ids(uow, tables.counterparties, COUNTERPARTY, external_ref=external_ref, limit=limit,
                                status=status)
        return [await _counterparty_out(uow, cid) for cid in ids]


@router.get("/counterparties/{counterparty_id}", response_model=CounterpartyOut)
async def get_counterparty(counterparty_id: str, request: Request, _: User = Depends(require_roles(*STAFF))):
    async with _container(request).uow() as uow:
        out = await _counterparty_out(uow, counterparty_id)
    if out is None:
        raise HTTPException(404, f"counterparty {counterparty_id} not found")
    return out


async def _counterparty_out(uow, counterparty_id: str) -> CounterpartyOut | None:
    record = await uow.counterparties.get(counterparty_id)
    if record is None:
        return None
    return CounterpartyOut(**record.__dict__, external_refs=await uow.external_refs.refs_of(COUNTERPARTY, record.id))


class VersionOut(BaseModel):
    id: str
    version_no: int
    sha256: str
    size: int
    content_type: str
    filename: str
    created_at: datetime


class DocumentOut(BaseModel):
    id: str
    doc_type: str
    title: str
    created_at: datetime
    retain_until: datetime | None
    legal_hold: bool
    legal_hold_reason: str | None
    disposed_at: datetime | None
    external_refs: list[ExternalRef]
    versions: list[VersionOut]


class StoredVersion(BaseModel):
    id: str
    version_id: str
    version_no: int
    sha256: str
    size: int
    created: bool


@router.post("/documents", status_code=201, response_model=StoredVersion)
async def upload_document(
    request: Request,
    file: UploadFile = File(...),
    doc_type: str = Form(..., min_length=1, max_length=64, pattern=r"^[a-z0-9_\-]+$"),
    title: str = Form(..., min_length=1, max_length=500),
    external_ref: str | None = Form(None, max_length=100),
    sha256: str | None = Form(None, pattern=r"^[0-9a-f]{64}$", description="declared hash, checked on arrival"),
    user: User = Depends(require_roles(*UPLOADERS)),
):
    container = _container(request)
    ref = parse_external_ref(external_ref) if external_ref else None
    actual, size = await receive_upload(container.content_store, file, container.settings.max_upload_bytes)
    if sha256 and sha256 != actual:
        raise HTTPException(422, f"declared sha256 {sha256} does not match the received content ({actual})")
    document, version, created = await store_version(
        container.uow(), user_id=user.id, doc_type=doc_type, title=title,
        filename=(file.filename or "document")[-255:], content_type=file.content_type or "application/octet-stream",
        sha256=actual, size=size, external_ref=ref, retention=container.retention,
    )
    return StoredVersion(id=document["id"], version_id=version["id"], version_no=version["version_no"],
                         sha256=version["sha256"], size=version["size"], created=created)


@router.get("/documents", response_model=list[DocumentOut])
async def list_documents(request: Request, external_ref: str | None = None, limit: int = Query(100, ge=1, le=1000),
                         _: User = Depends(require_roles(*STAFF))):
    async with _container(request).uow() as uow:
        ids = await _listed_ids(uow, tables.documents, DOCUMENT, external_ref=external_ref, limit=limit)
        return [await _document_out(uow, d) for d in ids]


@router.get("/documents/{document_id}", response_model=DocumentOut)
async def get_document(document_id: str, request: Request, _: User = Depends(require_roles(*STAFF))):
    async with _container(request).uow() as uow:
        out = await _document_out(uow, document_id)
    if out is None:
        raise HTTPException(404, f"document {document_id} not found")
    return out


async def _document_out(uow, document_id: str) -> DocumentOut | None:
    document = await uow.documents.get(document_id)
    if document is None:
        return None
    return DocumentOut(**document, external_refs=await uow.external_refs.refs_of(DOCUMENT, document_id),
                       versions=[VersionOut(**v) for v in await uow.documents.versions(document_id)])


@router.get("/documents/{document_id}/content")
async def document_content(document_id: str, request: Request, version: int | None = None,
                           _: User = Depends(require_roles(*STAFF))):
    container = _container(request)
    async with container.uow() as uow:
        versions = await uow.documents.versions(document_id)
        document = await uow.documents.get(document_id)
    if document is not None and document["disposed_at"] is not None:
        raise HTTPException(410, f"document {document_id} was disposed of on {document['disposed_at']:%Y-%m-%d} "
                                 "after its retention period")
    chosen = [v for v in versions if version is None or v["version_no"] == version]
    if not chosen:
        raise HTTPException(404, f"document {document_id} (version {version or 'latest'}) not found")
    v = chosen[-1]
    return FileResponse(container.content_store.path_for(v["sha256"]), media_type=v["content_type"],
                        filename=v["filename"], headers={"X-Content-SHA256": v["sha256"]})


class StepOut(BaseModel):
    stage_no: int
    name: str
    role: str
    status: str
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None


class ApprovalOut(BaseModel):
    id: str
    status: str
    current_stage: str | None
    title: str
    doc_type: str
    route: dict
    revision: int
    reason: str | None
    counterparty_id: str | None
    initiator_ref: str
    external_refs: list[ExternalRef]
    document: dict
    steps: list[StepOut]
    history: list[dict] = []
    created_at: datetime
    updated_at: datetime


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    comment: str | None = Field(None, max_length=5000, description="internal: stays in the ECM")
    reason: str | None = Field(None, max_length=500, description="shown to the requester on rejection")


def _approval_out(approval, refs, history=()) -> ApprovalOut:
    step = approval.current_step
    return ApprovalOut(
        id=approval.id, status=approval.status, current_stage=step.name if step else None, title=approval.title,
        doc_type=approval.doc_type, route={"doc_type": approval.route_doc_type, "version": approval.route_version},
        revision=approval.revision, reason=approval.reason, counterparty_id=approval.counterparty_id,
        initiator_ref=approval.initiator_ref, external_refs=refs,
        document={"id": approval.document_id, "version_id": approval.document_version_id,
                  "sha256": approval.document_sha256},
        steps=[StepOut(**{k: getattr(s, k) for k in StepOut.model_fields}) for s in approval.steps],
        history=list(history),
        created_at=approval.created_at, updated_at=approval.updated_at,
    )


@router.get("/approvals", response_model=list[ApprovalOut])
async def list_approvals(
    request: Request, external_ref: str | None = None, status: str | None = None,
    limit: int = Query(100, ge=1, le=1000), _: User = Depends(require_roles(*STAFF)),
):
    async with _container(request).uow() as uow:
        ids = await _listed_ids(uow, tables.approvals, APPROVAL, external_ref=external_ref, limit=limit,
                                status=status)
        return [_approval_out(await uow.approvals.get(a), await uow.external_refs.refs_of(APPROVAL, a)) for a in ids]


@router.get("/approvals/{approval_id}", response_model=ApprovalOut)
async def get_approval(approval_id: str, request: Request, _: User = Depends(require_roles(*STAFF))):
    async with _container(request).uow() as uow:
        approval = await uow.approvals.get(approval_id)
        if approval is None:
            raise HTTPException(404, f"approval {approval_id} not found")
        return _approval_out(approval, await uow.external_refs.refs_of(APPROVAL, approval_id),
                             await uow.history.of(APPROVAL, approval_id))


@router.post("/approvals/{approval_id}/decisions", response_model=ApprovalOut)
async def decide(approval_id: str, body: DecisionIn, request: Request,
                 user: User = Depends(require_roles(*APPROVERS))):
    container = _container(request)
    try:
        approval = await approval_cases.decide(
            container.uow(), approval_id=approval_id, user_id=user.id, role=user.role,
            decision=body.decision, comment=body.comment, reason=body.reason,
        )
    except approval_cases.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except DecisionNotAllowed as exc:
        raise HTTPException(403, str(exc)) from exc
    except ApprovalClosed as exc:
        raise HTTPException(409, str(exc)) from exc
    async with container.uow() as uow:
        return _approval_out(approval, await uow.external_refs.refs_of(APPROVAL, approval_id))
