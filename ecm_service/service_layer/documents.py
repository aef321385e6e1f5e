"""Document storage: immutable, content-addressed versions."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from schemas.common import ExternalRef

DOCUMENT = "document"


async def store_version(
    uow: EcmUnitOfWork, *, user_id: str, doc_type: str, title: str, filename: str, content_type: str,
    sha256: str, size: int, external_ref: ExternalRef | None,
) -> tuple[dict, dict, bool]:
    """Returns (document, version, created). Storing the same bytes under the same
    external ref again returns the existing version: transfers may be retried."""
    now = datetime.now(timezone.utc)
    async with uow:
        document_id = await uow.external_refs.find(DOCUMENT, external_ref) if external_ref else None
        if document_id:
            versions = await uow.documents.versions(document_id)
            if versions and versions[-1]["sha256"] == sha256:
                return await uow.documents.get(document_id), versions[-1], False
            version_no = len(versions) + 1
        else:
            document_id, version_no = str(uuid.uuid4()), 1
            await uow.documents.add_document(id=document_id, doc_type=doc_type, title=title, owner_id=user_id,
                                             created_at=now)
            if external_ref:
                await uow.external_refs.attach(DOCUMENT, document_id, external_ref)
        version = dict(id=str(uuid.uuid4()), document_id=document_id, version_no=version_no, sha256=sha256,
                       size=size, content_type=content_type, filename=filename, created_by=user_id, created_at=now)
        await uow.documents.add_version(**version)
        await uow.history.append(entity_type=DOCUMENT, entity_id=document_id, action="version_stored",
                                 actor=f"user:{user_id}", data={"version_no": version_no, "sha256": sha256,
                                                                "size": size})
        await uow.commit()
        document = await uow.documents.get(document_id)
    return document, version, True
