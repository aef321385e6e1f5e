"""The approval sheet (лист согласования): who decided what, on which version hash,
when — printable HTML and CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.service_layer.approvals import APPROVAL
from infra.users import User
from infra.web import require_roles

router = APIRouter(prefix="/api/approvals", tags=["approval sheet"])
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
READERS = ("legal", "finance", "director", "steward", "auditor", "admin")
COLUMNS = ["№", "Этап / Stage", "Роль / Role", "Решение / Decision", "Кто / By", "Когда / When (UTC)",
           "Версия / Version sha256", "Комментарий / Comment"]


async def _sheet(request: Request, approval_id: str):
    async with request.app.state.container.uow() as uow:
        approval = await uow.approvals.get(approval_id)
        if approval is None:
            raise HTTPException(404, f"approval {approval_id} not found")
        decisions = {(h["data"].get("stage"), h["actor"]): h for h in await uow.history.of(APPROVAL, approval_id)
                     if h["action"] == "decided"}
        names = dict((await uow.session.execute(select(tables.users.c.id, tables.users.c.name))).all())
    rows = []
    for step in approval.steps:
        decided = decisions.get((step.name, f"user:{step.decided_by}")) if step.decided_by else None
        rows.append([
            step.stage_no, step.name, step.role, step.status, names.get(step.decided_by, step.decided_by),
            step.decided_at.strftime("%Y-%m-%d %H:%M:%S") if step.decided_at else None,
            decided["data"].get("sha256") if decided else None, step.comment,
        ])
    return approval, rows


@router.get("/{approval_id}/sheet.html", response_class=HTMLResponse)
async def sheet_html(approval_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    approval, rows = await _sheet(request, approval_id)
    return templates.TemplateResponse(request, "approval_sheet.html", {
        "approval": approval, "columns": COLUMNS, "rows": rows,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})


@router.get("/{approval_id}/sheet.csv")
async def sheet_csv(approval_id: str, request: Request, _: User = Depends(require_roles(*READERS))):
    approval, rows = await _sheet(request, approval_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return Response(out.getvalue().encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="approval-sheet-{approval.id}.csv"'})
