"""Initial sync (runs fed in batches by a driver such as `bridgectl reconcile`) and the
auditors' reconciliation report with its stored, hash-proven snapshots."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from ecm_service.adapters import tables
from ecm_service.service_layer import reconciliation as rec
from infra.users import User
from infra.web import require_roles

router = APIRouter(prefix="/api/reconciliation", tags=["reconciliation"])
DRIVERS = ("admin", "integration")
REPORT_READERS = ("auditor", "admin", "steward")


def _uow(request: Request):
    return request.app.state.container.uow()


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    system: str = Field("crm", pattern=r"^[a-z0-9_\-]{1,32}$")
    mode: Literal["dry_run", "apply"] = "dry_run"


@router.post("/runs", status_code=201, summary="Start a reconciliation run (dry run unless mode=apply)")
async def start_run(body: RunIn, request: Request, user: User = Depends(require_roles(*DRIVERS))):
    return await rec.start_run(_uow(request), system=body.system, mode=body.mode, user_id=user.id)


@router.get("/runs", summary="Runs, newest first")
async def list_runs(request: Request, _: User = Depends(require_roles(*DRIVERS, *REPORT_READERS))):
    t = tables.reconciliation_runs
    async with _uow(request) as uow:
        return [dict(r) for r in (await uow.session.execute(
            select(t).order_by(t.c.started_at.desc()).limit(100))).mappings()]


@router.get("/runs/{run_id}")
async def get_run(run_id: str, request: Request, _: User = Depends(require_roles(*DRIVERS, *REPORT_READERS))):
    async with _uow(request) as uow:
        run = await rec.get_run(uow, run_id)
    if run is None:
        raise HTTPException(404, f"reconciliation run {run_id} not found")
    return run


class Organization(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=500)
    inn: str | None = Field(None, max_length=20)
    kpp: str | None = Field(None, max_length=20)
    ogrn: str | None = Field(None, max_length=20)
    updated_at: datetime | None = None


class BatchIn(BaseModel):
    organizations: list[Organization] = Field(min_length=1, max_length=2000)


@router.post("/runs/{run_id}/batches", summary="Reconcile a batch; resending a batch changes nothing")
async def reconcile_batch(run_id: str, body: BatchIn, request: Request, _: User = Depends(require_roles(*DRIVERS))):
    try:
        return await rec.reconcile_batch(_uow(request), run_id, [o.model_dump(mode="json")
                                                                 for o in body.organizations])
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except rec.RunClosed as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/runs/{run_id}/finish", summary="Mark duplicates and close the run")
async def finish_run(run_id: str, request: Request, user: User = Depends(require_roles(*DRIVERS))):
    try:
        return await rec.finish_run(_uow(request), run_id, user.id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc


async def report_run(uow, run_id: str | None) -> dict:
    run = await rec.get_run(uow, run_id) if run_id else await rec.latest_run(uow)
    if run is None:
        raise HTTPException(404, "no reconciliation run" + (f" {run_id}" if run_id else " yet"))
    return run


@router.get("/report", summary="The auditors' report: every organization with its state and evidence")
async def report(request: Request, run_id: str | None = None, state: Literal[rec.STATES] | None = None,  # type: ignore
                 format: Literal["json", "csv", "xlsx"] = "json", limit: int = Query(500, ge=1, le=100_000),
                 offset: int = Query(0, ge=0, le=10_000_000), _: User = Depends(require_roles(*REPORT_READERS))):
    async with _uow(request) as uow:
        run = await report_run(uow, run_id)
        rows = await rec.report_rows(uow, run["id"], state=state, limit=None if format != "json" else limit,
                                     offset=offset if format == "json" else 0)
        counts = await rec.state_counts(uow, run["id"])
    if format == "csv":
        return Response(rec.report_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="reconciliation-{run["id"]}.csv"'})
    if format == "xlsx":
        return Response(rec.report_xlsx(rows),
                        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                        headers={"Content-Disposition": f'attachment; filename="reconciliation-{run["id"]}.xlsx"'})
    return {"run": run, "counts": counts, "rows": rows}


@router.post("/report/snapshots", status_code=201,
             summary="Store the full report (CSV) as it is now; its sha256 proves later what it said")
async def take_snapshot(request: Request, run_id: str | None = None,
                        user: User = Depends(require_roles("auditor", "admin"))):
    container = request.app.state.container
    async with container.uow() as uow:
        run = await report_run(uow, run_id)
        content = rec.report_csv(await rec.report_rows(uow, run["id"]))
        sha, _ = await run_in_threadpool(container.content_store.put, io.BytesIO(content),  # it fsyncs
                                         max_bytes=len(content) + 1)
        snapshot = dict(id=str(uuid.uuid4()), run_id=run["id"], sha256=sha, rows=content.count(b"\n") - 1,
                        created_by=user.id, created_at=datetime.now(timezone.utc))
        await uow.session.execute(tables.report_snapshots.insert().values(**snapshot))
        await uow.history.append(entity_type="report_snapshot", entity_id=snapshot["id"], action="stored",
                                 actor=f"user:{user.id}", data={"run_id": run["id"], "sha256": sha})
        await uow.commit()
    return snapshot


@router.get("/report/snapshots", summary="Stored snapshots with their sha256")
async def list_snapshots(request: Request, _: User = Depends(require_roles(*REPORT_READERS))):
    t = tables.report_snapshots
    async with _uow(request) as uow:
        return [dict(r) for r in (await uow.session.execute(select(t).order_by(t.c.created_at.desc()))).mappings()]


@router.get("/report/snapshots/{snapshot_id}", summary="A stored snapshot, checked against its sha256")
async def get_snapshot(snapshot_id: str, request: Request, _: User = Depends(require_roles(*REPORT_READERS))):
    container = request.app.state.container
    t = tables.report_snapshots
    async with container.uow() as uow:
        row = (await uow.session.execute(select(t).where(t.c.id == snapshot_id))).mappings().first()
    if row is None:
        raise HTTPException(404, f"snapshot {snapshot_id} not found")
    content = container.content_store.path_for(row["sha256"]).read_bytes()
    if hashlib.sha256(content).hexdigest() != row["sha256"]:
        raise HTTPException(500, f"snapshot {snapshot_id} no longer matches its recorded sha256")
    return Response(content, media_type="text/csv; charset=utf-8",
                    headers={"X-Content-SHA256": row["sha256"],
                             "Content-Disposition": f'attachment; filename="snapshot-{snapshot_id}.csv"'})
