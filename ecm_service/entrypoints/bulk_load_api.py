"""Bulk load of counterparties from accounting exports (steward or admin)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ecm_service.service_layer.bulk_load import get_job, recent_jobs, refuse_job, spawn_job, start_job
from infra.users import User
from infra.web import require_roles, safe_filename, save_upload

router = APIRouter(prefix="/api/counterparties/bulk-loads", tags=["bulk load"])
LOADERS = ("steward", "admin")
READERS = (*LOADERS, "auditor")
KINDS = ("csv", "xlsx", "jsonl")


class LoadOut(BaseModel):
    id: str
    status: str
    file_name: str
    system: str
    started_at: datetime
    finished_at: datetime | None
    rows_done: int
    counts: dict[str, int]
    error: str | None
    report_url: str | None


def load_out(row) -> LoadOut:
    done = row["status"] in ("done", "failed") and row["report_path"]
    return LoadOut(**{k: row[k] for k in ("id", "status", "file_name", "system", "started_at", "finished_at",
                                          "rows_done", "counts", "error")},
                   report_url=f"/api/counterparties/bulk-loads/{row['id']}/report" if done else None)


async def begin_load(container, file: UploadFile, *, system: str, verify_clean_rows: bool, user: User) -> str:
    """Saves the upload and starts the load in the background (the API's and the page's).
    Raises HTTPException 413 or 422 for a file that cannot be loaded."""
    kind = Path(file.filename or "").suffix.lower().lstrip(".")
    if kind not in KINDS:
        raise HTTPException(422, f"unsupported file type {kind!r}: use one of {', '.join(KINDS)}")
    load_id = await start_job(container.session_factory, file_name=safe_filename(file.filename, "upload"),
                              system=system, user_id=user.id)
    folder = container.settings.imports_dir
    path = folder / f"{load_id}.{kind}"
    try:
        size = await run_in_threadpool(save_upload, file.file, path, container.settings.max_import_bytes)
    except ValueError as exc:
        refused = HTTPException(413, str(exc))
    else:
        refused = HTTPException(422, "the file is empty") if size == 0 else None
    if refused:  # the load never ran: it says why in the list, instead of staying `running`
        path.unlink(missing_ok=True)
        await refuse_job(container.session_factory, load_id, refused.detail)
        raise refused
    spawn_job(container.session_factory, load_id=load_id, path=path, kind=kind, system=system,
              actor=f"user:{user.id}", verify_clean=verify_clean_rows, report_path=folder / f"{load_id}.report.csv")
    return load_id


@router.post("", status_code=202, response_model=LoadOut,
             summary="Load counterparties from a CSV, XLSX or JSONL export")
async def start(request: Request, file: UploadFile = File(...),
                system: str = Form("1c", pattern=r"^[a-z0-9_\-]{1,32}$", description="the source system's name"),
                verify_clean_rows: bool = Form(False, description="rows with complete, valid ids become verified"),
                user: User = Depends(require_roles(*LOADERS))):
    load_id = await begin_load(request.app.state.container, file, system=system,
                               verify_clean_rows=verify_clean_rows, user=user)
    return await status(load_id, request, user)


@router.get("", response_model=list[LoadOut], summary="The latest loads, newest first")
async def latest(request: Request, limit: int = Query(50, ge=1, le=500),
                 _: User = Depends(require_roles(*READERS))):
    return await latest_loads(request.app.state.container, limit)


@router.get("/{load_id}", response_model=LoadOut)
async def status(load_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    return await find_load(request.app.state.container, load_id)


async def find_load(container, load_id: str) -> LoadOut:
    """One load, checked for a stop (the API's and the page's); 404 if there is none."""
    row = await get_job(container.session_factory, load_id, stale_after=container.settings.bulk_load_stale_seconds)
    if row is None:
        raise HTTPException(404, f"bulk load {load_id} not found")
    return load_out(row)


async def latest_loads(container, limit: int) -> list[LoadOut]:
    rows = await recent_jobs(container.session_factory, limit=limit,
                             stale_after=container.settings.bulk_load_stale_seconds)
    return [load_out(row) for row in rows]


def report_file(container, load: LoadOut) -> FileResponse:
    path = container.settings.imports_dir / f"{load.id}.report.csv"
    if load.report_url is None or not path.exists():
        raise HTTPException(409, f"bulk load {load.id} is {load.status}; the report is not ready")
    return FileResponse(path, media_type="text/csv", filename=f"bulk-load-{load.id}.csv")


@router.get("/{load_id}/report", summary="The row-level report (CSV)")
async def report(load_id: str, request: Request, user: User = Depends(require_roles(*READERS))):
    return report_file(request.app.state.container, await status(load_id, request, user))
