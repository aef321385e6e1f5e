"""The approval sheet (лист согласования): who decided what, on which version hash,
when — printable HTML and CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from ecm_service.entrypoints.approvals_api import readable_approval
from infra import business_day
from infra.spreadsheets import inert_row
from infra.users import User
from infra.web import require_roles

router = APIRouter(prefix="/api/approvals", tags=["approval sheet"])
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
READERS = ("legal", "finance", "director", "steward", "auditor", "admin")
COLUMNS = ["№", "Этап / Stage", "Роль / Role", "Решение / Decision", "Кто / By", "Когда / When",
           "Версия / Version sha256", "Комментарий / Comment", "От имени / On behalf of", "Раунд / Round"]


async def sheet_rows(request: Request, approval_id: str, user: User):
    """One row per decision ever made (every round, so decisions on superseded versions
    stay visible with their hash), then one per stage still open or waiting."""
    container = request.app.state.container
    async with container.uow() as uow:
        approval = await readable_approval(uow, container, user, approval_id)
    steps = {s.stage_no: s for s in approval.steps}
    decided = sorted((p for p in approval.assignments if p.decided_at), key=lambda p: (p.decided_at, p.stage_no))
    rows = [[p.stage_no, steps[p.stage_no].name, p.assignee_user or p.assignee_role, p.status, p.decided_by_name,
             business_day.local_text(p.decided_at, "%Y-%m-%d %H:%M:%S %Z"), p.sha256, p.comment,
             p.on_behalf_of or ("escalation" if p.via_escalation else None), p.round] for p in decided]
    done = {(p.stage_no, p.round) for p in decided}
    rows += [[s.stage_no, s.name, s.role, s.status, None, None, None, None, None, approval.round]
             for s in approval.steps if s.status in ("pending", "waiting") and (s.stage_no, approval.round) not in done]
    return approval, rows


@router.get("/{approval_id}/sheet.html", response_class=HTMLResponse)
async def sheet_html(approval_id: str, request: Request, user: User = Depends(require_roles(*READERS))):
    approval, rows = await sheet_rows(request, approval_id, user)
    return templates.TemplateResponse(request, "approval_sheet.html", {
        "approval": approval, "columns": COLUMNS, "rows": rows,
        "generated_at": business_day.local_text(datetime.now(timezone.utc), "%Y-%m-%d %H:%M %Z")})


@router.get("/{approval_id}/sheet.csv")
async def sheet_csv(approval_id: str, request: Request, user: User = Depends(require_roles(*READERS))):
    approval, rows = await sheet_rows(request, approval_id, user)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(map(inert_row, rows))
    return Response(out.getvalue().encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="approval-sheet-{approval.id}.csv"'})
