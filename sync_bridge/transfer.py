"""Document claim-check: the bytes go from the CRM file API to the ECM storage API over
HTTP, never through Kafka. Uploads are idempotent on the ECM side (same external ref,
same bytes -> same version), so a retried or replayed transfer stores nothing twice."""

from __future__ import annotations

import hashlib
import tempfile

import httpx

from infra.retrying import PermanentError
from infra.web import CORRELATION_HEADER
from schemas.crm_events import DocumentRef
from sync_bridge.translation import CRM, StoredDocument

CHUNK = 1024 * 1024
SPOOL_IN_MEMORY = 8 * 1024 * 1024


class TransientHttpError(Exception):
    """The other side answered 5xx or 429: worth another try."""


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientHttpError(f"{what}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise PermanentError(f"{what}: HTTP {response.status_code} {response.text[:300]}")


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
            async with self._crm.stream("GET", f"/api/documents/{document.id}/content", headers=headers) as resp:
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
