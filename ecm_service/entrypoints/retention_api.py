"""Legal hold (legal staff, admin) and disposal of documents past their retention (admin)."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ecm_service.service_layer import documents
from infra.users import User
from infra.web import require_roles

router = APIRouter(prefix="/api/documents", tags=["retention"])


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=3, max_length=2000)


class HoldOut(BaseModel):
    id: str
    legal_hold: bool
    legal_hold_reason: str | None
    retain_until: datetime | None


class DisposalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: AwareDatetime | None = Field(None, description="default: now")
    dry_run: bool = True


class DisposalOut(BaseModel):
    as_of: datetime
    dry_run: bool
    documents: list[dict]


async def _hold(request: Request, document_id: str, body: HoldIn, user: User, hold: bool) -> HoldOut:
    try:
        doc = await documents.set_legal_hold(request.app.state.container.uow(), document_id=document_id, hold=hold,
                                             user_id=user.id, reason=body.reason)
    except documents.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except documents.DocumentGone as exc:
        raise HTTPException(410, str(exc)) from exc
    return HoldOut(**{k: doc[k] for k in HoldOut.model_fields})


@router.post("/{document_id}/legal-hold", response_model=HoldOut, summary="Put a document under legal hold")
async def set_hold(document_id: str, body: HoldIn, request: Request,
                   user: User = Depends(require_roles("legal", "admin"))):
    return await _hold(request, document_id, body, user, True)


@router.post("/{document_id}/legal-hold/release", response_model=HoldOut, summary="Release a legal hold")
async def release_hold(document_id: str, body: HoldIn, request: Request,
                       user: User = Depends(require_roles("legal", "admin"))):
    return await _hold(request, document_id, body, user, False)


@router.post("/disposals", response_model=DisposalOut,
             summary="Dispose of documents past retention (dry run by default)")
async def dispose(body: DisposalIn, request: Request, user: User = Depends(require_roles("admin"))):
    container = request.app.state.container
    as_of = body.as_of or datetime.now(timezone.utc)
    results = await documents.dispose_expired(container.uow(), container.content_store, now=as_of,
                                              actor=f"user:{user.id}", dry_run=body.dry_run,
                                              retention=container.retention)
    return DisposalOut(as_of=as_of, dry_run=body.dry_run, documents=results)
