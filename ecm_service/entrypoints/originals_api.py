"""Paper originals of documents: registered, handed out and taken back by legal staff and
admins; read by whoever may read the document; the list of those out of their place for
legal staff, admins and auditors."""

from __future__ import annotations

from datetime import date
from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ecm_service.entrypoints.api import STAFF, readable_document
from ecm_service.service_layer import originals
from infra.users import User
from infra.web import csv_download, require_roles

router = APIRouter(prefix="/api", tags=["paper originals"])
KEEPERS = ("legal", "admin")  # who registers, hands out and takes back originals
REGISTER_READERS = ("legal", "admin", "auditor")  # who reads the register of originals out
# An original's number within its document (a database integer: a larger one is not a 500).
NUMBER = Path(ge=1, le=1_000_000)


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    location: str = Field(min_length=1, max_length=300, description="where it is filed, e.g. 'archive, shelf 4'")
    version_id: str | None = Field(None, max_length=36, description="the version signed; default: the latest")


class HandOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    to_user_id: str = Field(min_length=1, max_length=36, description="the ECM user who takes it")
    due_back: date = Field(description="the company's day it is to be back by (today or later)")
    purpose: str = Field(min_length=3, max_length=500)


class ReturnIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    location: str | None = Field(None, min_length=1, max_length=300, description="default: where it was kept")


def original_out(original: dict) -> dict:
    keys = ("number", "state", "location", "version_id", "version_no", "sha256", "holder_id", "holder_name",
            "due_back", "purpose", "handed_out_at", "registered_at", "overdue_days", "document_id", "title",
            "doc_type")
    return {k: original[k] for k in keys if k in original}


async def _originals_of(request: Request, document_id: str, number: int | None = None) -> list[dict]:
    async with request.app.state.container.uow() as uow:
        found = await uow.originals.of_document(document_id, number=number)
    return [original_out(o) for o in originals.with_overdue(found)]


async def _one(request: Request, document_id: str, number: int) -> dict:
    (original,) = await _originals_of(request, document_id, number)
    return original


@router.get("/documents/{document_id}/originals", summary="A document's paper originals: where each is, or who has it")
async def list_originals(document_id: str, request: Request, user: User = Depends(require_roles(*STAFF))):
    container = request.app.state.container
    async with container.uow() as uow:
        await readable_document(uow, container, user, document_id)
    return await _originals_of(request, document_id)


@router.post("/documents/{document_id}/originals", status_code=201, summary="Register a signed paper original")
async def register_original(document_id: str, body: RegisterIn, request: Request,
                            user: User = Depends(require_roles(*KEEPERS))):
    number = await originals.register(request.app.state.container.uow(), document_id=document_id,
                                      location=body.location, version_id=body.version_id, user=user)
    return await _one(request, document_id, number)


@router.post("/documents/{document_id}/originals/{number}/hand-out",
             summary="Hand an original out to a colleague, with a purpose and a date to bring it back")
async def hand_out_original(document_id: str, body: HandOutIn, request: Request,
                            number: int = NUMBER, user: User = Depends(require_roles(*KEEPERS))):
    await originals.hand_out(request.app.state.container.uow(), document_id=document_id, number=number,
                             to_user_id=body.to_user_id, due_back=body.due_back, purpose=body.purpose, user=user)
    return await _one(request, document_id, number)


@router.post("/documents/{document_id}/originals/{number}/return", summary="Take an original back to its place")
async def return_original(document_id: str, body: ReturnIn, request: Request, number: int = NUMBER,
                          user: User = Depends(require_roles(*KEEPERS))):
    await originals.take_back(request.app.state.container.uow(), document_id=document_id, number=number,
                              location=body.location, user=user)
    return await _one(request, document_id, number)


CSV_COLUMNS = ["title", "doc_type", "number", "version_no", "holder_name", "holder_id", "due_back", "overdue_days",
               "purpose", "location", "handed_out_at", "document_id"]


def register_csv(rows: list[dict]) -> Response:
    """The register of originals out as CSV (`infra.web.csv_download`: a purpose typed as
    `=…` is not a formula)."""
    return csv_download(rows, CSV_COLUMNS, "originals-out.csv")


@router.get("/originals/handed-out", summary="Originals out of their place, the longest overdue first")
async def handed_out(request: Request, holder_id: str | None = Query(None, max_length=36),
                     format: Literal["json", "csv"] = "json", _: User = Depends(require_roles(*REGISTER_READERS))):
    async with request.app.state.container.uow() as uow:
        rows = [original_out(o) for o in originals.with_overdue(await uow.originals.handed_out(holder_id=holder_id))]
    return register_csv(rows) if format == "csv" else rows
