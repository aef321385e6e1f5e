"""The steward's bulk-load page: upload an accounting export, watch the latest loads
(status, counts, interruptions) and download each one's row-level report. The same
rights as the API: the steward and admins load, auditors read."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse

from ecm_service.entrypoints.bulk_load_api import LOADERS, READERS, begin_load, find_load, latest_loads, report_file
from ecm_service.entrypoints.pages import page_user, render
from infra.pages import back_to
from infra.users import User

router = APIRouter(prefix="/ui/bulk-loads", include_in_schema=False)


def _reader(user: User) -> None:
    if user.role not in READERS:
        raise HTTPException(403, "bulk loads are the data steward's (auditors read them)")


@router.get("", response_class=HTMLResponse)
async def bulk_loads(request: Request, user: User = Depends(page_user), started: str | None = None,
                     error: str | None = None):
    _reader(user)
    loads = await latest_loads(request.app.state.container, 30)
    return render(request, "bulk_loads.html", user, loads=loads, started=started, error=error,
                  can_load=user.role in LOADERS)


@router.post("")
async def upload(request: Request, file: UploadFile = File(...),
                 system: str = Form("1c", pattern=r"^[a-z0-9_\-]{1,32}$"), verify_clean_rows: str = Form(""),
                 user: User = Depends(page_user)):
    if user.role not in LOADERS:
        raise HTTPException(403, "only the steward and admins load the registry")
    try:
        load_id = await begin_load(request.app.state.container, file, system=system,
                                   verify_clean_rows=bool(verify_clean_rows), user=user)
    except HTTPException as exc:
        return back_to("/ui/bulk-loads", error=str(exc.detail))
    return back_to("/ui/bulk-loads", started=load_id)


@router.get("/{load_id}/report")
async def report(load_id: str, request: Request, user: User = Depends(page_user)):
    _reader(user)
    container = request.app.state.container
    return report_file(container, await find_load(container, load_id))
