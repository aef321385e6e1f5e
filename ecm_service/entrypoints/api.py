"""ECM HTTP API for approvers, the steward, auditors and integrations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from prometheus_client import Counter
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from ecm_service.adapters import tables
from ecm_service.service_layer.access import can_read_document, ensure_document_readable
from ecm_service.service_layer.documents import DOCUMENT, Arrived, DocumentGone, store_many, store_version
from ecm_service.service_layer.registry import COUNTERPARTY
from infra import business_day
from infra.content_store import CorruptContent, FileTooLarge, Refused, detect_content_type
from infra.users import User
from infra.web import StorableText, receive_upload, refuse_unstorable, require_roles, safe_filename
from schemas.common import ExternalRef

log = structlog.get_logger()
CONTENT_INTEGRITY_FAILURES = Counter("ecm_content_integrity_failures_total",
                                     "Stored document versions whose bytes no longer match their sha256 on read")

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
    q: str | None = Query(None, max_length=200, description="registry search, as the registry page's: an INN or "
                          "OGRN, or the words of the name in any order, each anywhere in it; by name"),
    limit: int = Query(100, ge=1, le=1000),
    _: User = Depends(require_roles(*STAFF)),
):
    async with _container(request).uow() as uow:
        if q is not None and q.strip():
            found = await uow.counterparties.search(text=q, status=status, limit=limit)
            if external_ref is not None:
                named = await uow.external_refs.find(COUNTERPARTY, parse_external_ref(external_ref))
                found = [c for c in found if c.id == named]
            return [await counterparty_out(uow, record) for record in found]
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
    return await counterparty_out(uow, record)


async def counterparty_out(uow, record) -> CounterpartyOut:
    """A record as the API shows it, with the references attached to it."""
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


async def _receive(container, file: UploadFile, declared_sha256: str | None) -> tuple[str, int, str]:
    """Stores the bytes: (sha256, size, detected content type); 422 when the declared hash differs."""
    actual, size = await receive_upload(container.content_store, file, container.settings.max_upload_bytes,
                                        declared_sha256)
    content_type = await run_in_threadpool(
        detect_content_type, container.content_store.path_for(actual), filename=file.filename or "",
        declared=file.content_type)
    return actual, size, content_type


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
    refuse_unstorable(title, external_ref)
    ref = parse_external_ref(external_ref) if external_ref else None
    actual, size, content_type = await _receive(container, file, sha256)
    document, version, created = await store_version(
        container.uow(), user_id=user.id, doc_type=doc_type, title=title,
        filename=safe_filename(file.filename), content_type=content_type,
        sha256=actual, size=size, external_ref=ref, retention=container.retention,
    )
    return StoredVersion(id=document["id"], version_id=version["id"], version_no=version["version_no"],
                         sha256=version["sha256"], size=version["size"], created=created)


BATCH_MAX_FILES = 200


class BatchManifestItem(BaseModel):
    external_ref: Annotated[str, StorableText] = Field(..., max_length=100)
    doc_type: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-z0-9_\-]+$")
    title: Annotated[str, StorableText] = Field(..., min_length=1, max_length=500)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


_MANIFEST = TypeAdapter(list[BatchManifestItem])


class BatchItemOut(BaseModel):
    """One file's outcome: stored (its ids, as POST /api/documents answers) or refused (`error`)."""

    external_ref: str
    id: str | None = None
    version_id: str | None = None
    version_no: int | None = None
    sha256: str | None = None
    size: int | None = None
    created: bool | None = None
    error: str | None = None


def _receive_all(container, files: list[UploadFile], manifest: list[BatchManifestItem]) -> list:
    """Each file into the content store, checked against its declared hash: (sha256, size,
    content type) or the reason it was refused. One worker thread for the whole batch, and
    the accepted files made durable together (ContentStore.commit)."""
    store, staged, out = container.content_store, [], []
    try:
        for file, item in zip(files, manifest, strict=True):
            try:
                staged.append(store.stage(file.file, max_bytes=container.settings.max_upload_bytes,
                                          expected_sha256=item.sha256, allow_empty=False))
            except (FileTooLarge, Refused) as exc:
                out.append(str(exc))
                continue
            out.append(staged[-1])
    except BaseException:
        store.discard(staged)
        raise
    store.commit(staged)
    return [got if isinstance(got, str) else
            (got.sha256, got.size, detect_content_type(store.path_for(got.sha256), filename=file.filename or "",
                                                       declared=file.content_type))
            for got, file in zip(out, files, strict=True)]


@router.post("/documents/batch", response_model=list[BatchItemOut],
             summary="Store many files under external refs in one call (integrations)")
async def upload_documents(
    request: Request,
    files: list[UploadFile] = File(..., description=f"at most {BATCH_MAX_FILES}, in the manifest's order"),
    manifest: str = Form(..., description='JSON list, one item per file: {"external_ref": "crm:42", '
                                          '"doc_type": "contract", "title": "...", "sha256": "..."}'),
    user: User = Depends(require_roles(*UPLOADERS)),
):
    """What POST /api/documents does, for each file, answered in order. A file that is
    empty, over the upload limit or not its declared sha256 is refused on its own line
    (`error`); the others are stored. The whole request is refused (4xx) when the manifest
    is malformed, does not match the files, or the body is over the upload limit."""
    container = _container(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > container.settings.max_upload_bytes:
        raise HTTPException(413, f"a batch exceeds {container.settings.max_upload_bytes} bytes; send fewer files")
    try:
        items = _MANIFEST.validate_json(manifest)
    except ValidationError as exc:
        raise HTTPException(422, f"manifest: {exc.errors(include_url=False, include_context=False)[:5]}") from exc
    if len(items) != len(files):
        raise HTTPException(422, f"manifest has {len(items)} items for {len(files)} files")
    if len(files) > BATCH_MAX_FILES:
        raise HTTPException(422, f"at most {BATCH_MAX_FILES} files in one batch")
    refs = [parse_external_ref(item.external_ref) for item in items]
    received = await run_in_threadpool(_receive_all, container, files, items)
    arrived = [Arrived(external_ref=ref, doc_type=item.doc_type, title=item.title,
                       filename=safe_filename(file.filename), content_type=got[2], sha256=got[0], size=got[1])
               for ref, item, file, got in zip(refs, items, files, received, strict=True) if not isinstance(got, str)]
    stored = iter(await store_many(container.uow, user_id=user.id, items=arrived, retention=container.retention))
    answers = []
    for item, got in zip(items, received, strict=True):
        if isinstance(got, str):
            answers.append(BatchItemOut(external_ref=item.external_ref, error=got))
            continue
        document, version, created = next(stored)
        answers.append(BatchItemOut(external_ref=item.external_ref, id=document["id"], version_id=version["id"],
                                    version_no=version["version_no"], sha256=version["sha256"],
                                    size=version["size"], created=created))
    return answers


@router.post("/documents/{document_id}/versions", status_code=201, response_model=StoredVersion,
             summary="Upload a new version; approvals in progress on the document re-open")
async def upload_version(document_id: str, request: Request, file: UploadFile = File(...),
                         sha256: str | None = Form(None, pattern=r"^[0-9a-f]{64}$"),
                         user: User = Depends(require_roles(*UPLOADERS))):
    container = _container(request)
    async with container.uow() as uow:
        await readable_document(uow, container, user, document_id)
    actual, size, content_type = await _receive(container, file, sha256)
    try:
        document, version, created = await store_version(
            container.uow(), user_id=user.id, doc_type="", title="", document_id=document_id,
            filename=safe_filename(file.filename), content_type=content_type, sha256=actual, size=size,
            external_ref=None)
    except DocumentGone as exc:
        raise HTTPException(410, str(exc)) from exc
    return StoredVersion(id=document["id"], version_id=version["id"], version_no=version["version_no"],
                         sha256=version["sha256"], size=version["size"], created=created)


async def readable_document(uow, container, user: User, document_id: str) -> dict:
    """The document, or 404 when it does not exist and 403 when the user may not see it."""
    document = await uow.documents.get(document_id)
    if document is None:
        raise HTTPException(404, f"document {document_id} not found")
    await ensure_document_readable(uow, user, document, container.document_types, business_day.today())
    return document


@router.get("/documents", response_model=list[DocumentOut])
async def list_documents(request: Request, external_ref: str | None = None, limit: int = Query(100, ge=1, le=1000),
                         user: User = Depends(require_roles(*STAFF))):
    """Only the documents the caller may see."""
    container = _container(request)
    async with container.uow() as uow:
        ids = await _listed_ids(uow, tables.documents, DOCUMENT, external_ref=external_ref, limit=limit)
        out = []
        for document_id in ids:
            document = await uow.documents.get(document_id)
            if await can_read_document(uow, user, document, container.document_types, business_day.today()):
                out.append(await _document_out(uow, document_id))
        return out


@router.get("/documents/{document_id}", response_model=DocumentOut)
async def get_document(document_id: str, request: Request, user: User = Depends(require_roles(*STAFF))):
    container = _container(request)
    async with container.uow() as uow:
        await readable_document(uow, container, user, document_id)
        return await _document_out(uow, document_id)


async def _document_out(uow, document_id: str) -> DocumentOut | None:
    document = await uow.documents.get(document_id)
    if document is None:
        return None
    return DocumentOut(**document, external_refs=await uow.external_refs.refs_of(DOCUMENT, document_id),
                       versions=[VersionOut(**v) for v in await uow.documents.versions(document_id)])


@router.get("/documents/{document_id}/content")
async def document_content(document_id: str, request: Request, version: int | None = None,
                           user: User = Depends(require_roles(*STAFF))):
    return await stream_version(_container(request), user, document_id, version)


async def stream_version(container, user: User, document_id: str, version: int | None) -> FileResponse:
    """Streams a version's bytes (the latest unless a number is given) after checking they
    still hash to the version's sha256; the API and the pages both serve files this way."""
    async with container.uow() as uow:
        document = await readable_document(uow, container, user, document_id)
        versions = await uow.documents.versions(document_id)
    if document["disposed_at"] is not None:
        raise HTTPException(410, f"document {document_id} was disposed of on {document['disposed_at']:%Y-%m-%d} "
                                 "after its retention period")
    chosen = [v for v in versions if version is None or v["version_no"] == version]
    if not chosen:
        raise HTTPException(404, f"document {document_id} (version {version or 'latest'}) not found")
    v = chosen[-1]
    try:
        path = await run_in_threadpool(container.content_store.verified_path, v["sha256"])
    except (CorruptContent, FileNotFoundError) as exc:
        log.error("content_integrity_failed", document_id=document_id, version_no=v["version_no"], error=str(exc))
        CONTENT_INTEGRITY_FAILURES.inc()
        raise HTTPException(500, f"the stored content of document {document_id} version {v['version_no']} failed "
                                 "its integrity check; it is not served. Operators were alerted.") from exc
    return FileResponse(path, media_type=v["content_type"],
                        filename=v["filename"], headers={"X-Content-SHA256": v["sha256"]})
