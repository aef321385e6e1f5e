"""Import jobs as the API and the pages both run them: upload (file saved, header read,
mapping suggested), then a dry run, then the apply, each in the background."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import structlog
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from crm_service.adapters import tables
from crm_service.service_layer import imports
from infra.runtime import REQUEST_JOBS
from infra.spreadsheets import UnreadableFile
from infra.web import safe_filename, save_upload

log = structlog.get_logger()

KINDS = ("csv", "xlsx")


class ImportRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


RUNNING = ("dry_running", "applying")


async def get_import(session_factory, import_id: str, *, stale_after: float | None = None) -> dict:
    """The job. With `stale_after`, a running job that has made no progress for that many
    seconds is marked failed first: the process running it stopped (a deploy's restart, a
    crash), and any replica may then start it again."""
    row = await _load(session_factory, import_id)
    if stale_after is not None and row["status"] in RUNNING:
        since = row["progress_at"] or row["created_at"]  # jobs started before migration 0012 have none
        if datetime.now(timezone.utc) - since > timedelta(seconds=stale_after):
            await _interrupt(session_factory, row, stale_after)
            row = await _load(session_factory, import_id)
    return row


async def _load(session_factory, import_id: str) -> dict:
    async with session_factory() as session:
        row = (await session.execute(select(tables.imports).where(tables.imports.c.id == import_id))
               ).mappings().first()
    if row is None:
        raise ImportRefused(404, f"import {import_id} not found")
    return dict(row)


async def _interrupt(session_factory, row: dict, stale_after: float) -> None:
    t = tables.imports
    same_run = t.c.run_id == row["run_id"] if row["run_id"] else t.c.run_id.is_(None)
    error = (f"interrupted: no progress for over {stale_after:.0f} s (the process running it stopped); "
             "run the dry run again")
    async with session_factory() as session, session.begin():
        taken = (await session.execute(
            update(t).where(t.c.id == row["id"], t.c.status == row["status"], same_run)
            .values(status="failed", run_id=None, error=error, finished_at=datetime.now(timezone.utc)))).rowcount
    if taken:
        log.warning("import_interrupted", import_id=row["id"], was=row["status"], rows_done=row["rows_done"])


async def create_import(container, upload, *, filename: str | None, user_id: str) -> str:
    kind = Path(filename or "").suffix.lower().lstrip(".")
    if kind not in KINDS:
        raise ImportRefused(422, f"unsupported file type {kind!r}: use csv or xlsx")
    import_id = str(uuid.uuid4())
    path = container.settings.imports_dir / f"{import_id}.{kind}"
    try:
        size = await run_in_threadpool(save_upload, upload, path, container.settings.max_import_bytes)
        if size == 0:
            raise ImportRefused(422, "the file is empty")
        header = await run_in_threadpool(imports.read_header, path)
    except ValueError as exc:
        path.unlink(missing_ok=True)
        raise ImportRefused(413, str(exc)) from exc
    except (UnreadableFile, ImportRefused) as exc:
        path.unlink(missing_ok=True)
        raise exc if isinstance(exc, ImportRefused) else ImportRefused(422, str(exc)) from exc
    async with container.session_factory() as session, session.begin():
        await session.execute(tables.imports.insert().values(
            id=import_id, file_name=safe_filename(filename, "upload"), file_path=str(path), created_by=user_id,
            created_at=datetime.now(timezone.utc), header=header, mapping=imports.suggest_mapping(header),
            status="uploaded", counts={}))
    return import_id


MAPPING_FIXED = ("dry_running", "applying", "applied")  # statuses in which the mapping can no longer change


async def set_mapping(session_factory, import_id: str, mapping: dict[str, str]) -> None:
    """A new mapping makes the earlier dry run void: the import is back to `uploaded`.
    Written only if the job is still where it was read (like `start`): a run started by
    another request in between keeps the mapping it started with, and this one is a 409."""
    job = await get_import(session_factory, import_id)
    if job["status"] in MAPPING_FIXED:
        raise ImportRefused(409, f"the import is {job['status']}; the mapping can no longer change")
    try:
        mapping = imports.validate_mapping(mapping, job["header"])
    except ValueError as exc:
        raise ImportRefused(422, str(exc)) from exc
    t = tables.imports
    async with session_factory() as session, session.begin():
        changed = (await session.execute(update(t).where(t.c.id == import_id, t.c.status == job["status"])
                                         .values(mapping=mapping, status="uploaded", counts={}, rows_done=0))).rowcount
    if not changed:
        raise ImportRefused(409, "the import was started meanwhile; the mapping can no longer change")


async def start(container, import_id: str, *, user_id: str, apply: bool) -> None:
    """The dry run (from uploaded, a dry run or a failure) or the apply (after a dry run)."""
    job = await get_import(container.session_factory, import_id, stale_after=container.settings.import_stale_seconds)
    allowed = ("dry_run",) if apply else ("uploaded", "dry_run", "failed")
    if job["status"] not in allowed:
        raise ImportRefused(409, f"the import is {job['status']}; " + (
            "run the dry run first" if apply else "it cannot be dry-run now"))
    try:
        imports.validate_mapping(job["mapping"], job["header"])
    except ValueError as exc:
        raise ImportRefused(422, str(exc)) from exc
    run_id, t = str(uuid.uuid4()), tables.imports
    # A report per run: a run taken over (imports.RunTakenOver) may still be writing its own.
    report = container.settings.imports_dir / f"{import_id}.{run_id[:8]}.{'apply' if apply else 'dry-run'}.csv"
    async with container.session_factory() as session, session.begin():
        started = (await session.execute(update(t).where(t.c.id == import_id, t.c.status == job["status"]).values(
            status="applying" if apply else "dry_running", rows_done=0, counts={}, report_path=str(report),
            run_id=run_id, progress_at=datetime.now(timezone.utc), error=None))).rowcount
    if not started:  # another request (on this replica or another) started it a moment ago
        raise ImportRefused(409, "the import was started meanwhile")
    REQUEST_JOBS.spawn(lambda stop: imports.run_import(
        container.session_factory, import_id=import_id, path=Path(job["file_path"]), mapping=job["mapping"],
        user_id=user_id, apply=apply, report_path=report, run_id=run_id, stop=stop))
