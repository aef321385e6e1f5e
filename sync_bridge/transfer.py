"""Document claim-check: the bytes go from the CRM file API to the ECM storage API over
HTTP, never through Kafka. Uploads are idempotent on the ECM side (same external ref,
same bytes -> same version), so a retried or replayed transfer stores nothing twice; new
bytes under the same ref are the document's next version there."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass

import httpx

from infra.outages import UNAVAILABLE_STATUSES, ServiceUnavailable, retry_after_seconds
from infra.retrying import PermanentError
from infra.web import CORRELATION_HEADER
from schemas.crm_events import DocumentRef
from sync_bridge.translation import CRM, StoredDocument

CHUNK = 1024 * 1024
SPOOL_IN_MEMORY = 8 * 1024 * 1024


class TransientHttpError(Exception):
    """The other side answered 5xx: worth a few more tries."""


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code in UNAVAILABLE_STATUSES:  # tried again as long as it lasts, as long apart as asked
        raise ServiceUnavailable(f"{what}: HTTP {response.status_code}", status=response.status_code,
                                 retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    if response.status_code >= 500:
        raise TransientHttpError(f"{what}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise PermanentError(f"{what}: HTTP {response.status_code} {response.text[:300]}")


@dataclass(frozen=True)
class BatchLimits:
    """Which documents travel together: each at most `document_bytes`, a batch at most
    `batch_bytes` and `documents` long. Larger documents stream one by one."""

    document_bytes: int = 1024 * 1024
    batch_bytes: int = 8 * 1024 * 1024
    documents: int = 100


def plan_batches(documents: list[DocumentRef], limits: BatchLimits) -> tuple[list[list[DocumentRef]],
                                                                               list[DocumentRef]]:
    """(batches, one by one): each distinct document once, in the order given."""
    batches: list[list[DocumentRef]] = []
    alone: list[DocumentRef] = []
    current: list[DocumentRef] = []
    size = 0
    for document in {d.id: d for d in documents}.values():
        if document.size > limits.document_bytes:
            alone.append(document)
            continue
        if current and (len(current) >= limits.documents or size + document.size > limits.batch_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(document)
        size += document.size
    if current:
        batches.append(current)
    return batches, alone


class DocumentTransfer:
    def __init__(self, *, crm_url: str, crm_token: str, ecm_url: str, ecm_token: str, timeout: float):
        self._crm = httpx.AsyncClient(base_url=crm_url, headers={"Authorization": f"Bearer {crm_token}"},
                                      timeout=timeout)
        self._ecm = httpx.AsyncClient(base_url=ecm_url, headers={"Authorization": f"Bearer {ecm_token}"},
                                      timeout=timeout)

    async def close(self) -> None:
        await self._crm.aclose()
        await self._ecm.aclose()

    async def copy(self, document: DocumentRef, *, correlation_id: str) -> StoredDocument:
        headers = {CORRELATION_HEADER: correlation_id}
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as buffer:
            digest = hashlib.sha256()
            # the version the event names, even when a newer one has arrived since
            async with self._crm.stream("GET", f"/api/documents/{document.id}/content",
                                        params={"sha256": document.sha256}, headers=headers) as resp:
                _check(resp, f"CRM document {document.id}")
                async for chunk in resp.aiter_bytes(CHUNK):
                    digest.update(chunk)
                    buffer.write(chunk)
            if digest.hexdigest() != document.sha256:
                raise PermanentError(
                    f"CRM document {document.id} content hash {digest.hexdigest()} differs from the event's "
                    f"{document.sha256}"
                )
            buffer.seek(0)
            resp = await self._ecm.post(
                "/api/documents",
                headers=headers,
                files={"file": (document.filename, buffer, document.content_type)},
                data={"doc_type": document.doc_type, "title": document.filename,
                      "external_ref": f"{CRM}:{document.id}", "sha256": document.sha256},
            )
        _check(resp, f"ECM upload of CRM document {document.id}")
        body = resp.json()
        return StoredDocument(document_id=body["id"], version_id=body["version_id"], sha256=body["sha256"])

    async def copy_batch(self, documents: list[DocumentRef], *, correlation_id: str) -> dict[str, StoredDocument]:
        """Small documents in two calls: their bytes from the CRM in one answer, into the
        ECM in one upload. Returns CRM document id -> where the ECM keeps it, for the
        documents that arrived whole and were stored; the others (bytes that are not the
        event's hash, a file the ECM refused) are left out, for a one-by-one copy to
        report. Raises when either call fails as a whole."""
        headers = {CORRELATION_HEADER: correlation_id}
        resp = await self._crm.post("/api/documents/contents", headers=headers,
                                    json={"ids": [document.id for document in documents]})
        _check(resp, f"CRM contents of {len(documents)} documents")
        sizes = [int(n) for n in resp.headers.get("X-Content-Sizes", "").split(",") if n]
        if len(sizes) != len(documents) or sum(sizes) != len(resp.content):
            raise TransientHttpError(f"CRM contents: {len(sizes)} sizes for {len(documents)} documents, "
                                     f"{len(resp.content)} bytes")
        whole, start = [], 0
        for document, size in zip(documents, sizes, strict=True):
            content = resp.content[start:start + size]
            start += size
            if hashlib.sha256(content).hexdigest() == document.sha256:
                whole.append((document, content))
        if not whole:
            return {}
        manifest = [{"external_ref": f"{CRM}:{document.id}", "doc_type": document.doc_type,
                     "title": document.filename, "sha256": document.sha256} for document, _ in whole]
        resp = await self._ecm.post(
            "/api/documents/batch", headers=headers, data={"manifest": json.dumps(manifest)},
            files=[("files", (document.filename, content, document.content_type)) for document, content in whole])
        _check(resp, f"ECM upload of {len(whole)} CRM documents")
        answers = resp.json()
        if len(answers) != len(whole):
            raise TransientHttpError(f"ECM batch upload: {len(answers)} answers for {len(whole)} files")
        return {document.id: StoredDocument(document_id=a["id"], version_id=a["version_id"], sha256=a["sha256"])
                for (document, _), a in zip(whole, answers, strict=True) if not a.get("error")}
