"""Bulk load of counterparties from an accounting system's export (1C/ERP).

Rows are read as a stream and handled in chunks, each chunk in one transaction with
set-based reads and writes, so a million rows take minutes. The accounting system's own
code is kept as an external ref ("1c:<code>"): a re-run finds each record by it and
updates it instead of duplicating (records still pending verification; a verified
record that differs is reported for the steward, never overwritten). Every row ends in
the report with its outcome."""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path

import structlog
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from ecm_service.adapters import tables
from ecm_service.adapters.history import HistoryLog
from ecm_service.adapters.repositories import write_name_keys
from ecm_service.adapters.row_sources import read_rows
from ecm_service.domain.counterparty import MERGED, PENDING, VERIFIED
from ecm_service.domain.identifiers import compact, quality_flags
from ecm_service.domain.matching import match_name
from ecm_service.domain.names import normalize_name
from ecm_service.service_layer.registry import COUNTERPARTY
from infra.db import analyze
from infra.runtime import REQUEST_JOBS
from infra.spreadsheets import inert_row

FIELDS = ("name", "short_name", "legal_form", "country", "inn", "kpp", "ogrn", "vat", "addresses")
ANALYZE_EVERY_CHUNKS = 8
log = structlog.get_logger()

# The widths of the registry's columns a row's values go into.
WIDTHS = {"code": tables.external_refs.c.external_id.type.length,
          **{field: tables.counterparties.c[field].type.length
             for field in ("name", "short_name", "legal_form", "inn", "kpp", "ogrn", "vat")}}
REPORT_HEADER = ["row", "code", "outcome", "counterparty_id", "quality_flags", "message"]


@dataclass
class LoadResult:
    counts: Counter = field(default_factory=Counter)
    rows: int = 0
    stopped: bool = False  # ended early: its service was stopping


def _prepare(row: dict) -> dict:
    values = {
        "name": row.get("name"), "short_name": row.get("short_name"), "legal_form": row.get("legal_form"),
        "country": (row.get("country") or "RU").upper()[:2], "inn": compact(row.get("inn")),
        "kpp": compact(row.get("kpp")), "ogrn": compact(row.get("ogrn")), "vat": compact(row.get("vat")),
        "addresses": [{"kind": "legal", "text": row["address"]}] if row.get("address") else [],
    }
    values["quality_flags"] = quality_flags(**{k: values[k] for k in ("inn", "kpp", "ogrn", "country",
                                                                       "legal_form", "vat")})
    values["normalized_name"] = normalize_name(values["name"])
    values["match_name"] = match_name(values["name"] or "")
    return values


class BulkLoader:
    def __init__(self, session_factory: async_sessionmaker, *, system: str, actor: str, verify_clean: bool,
                 chunk_size: int = 5000):
        self._sessions = session_factory
        self._system = system
        self._actor = actor
        self._verify_clean = verify_clean
        self._chunk = chunk_size
        # Keyed by hash (a million codes as strings would cost ~100 MB): a collision between
        # two different 64-bit hashes in one file is far below one in a million.
        self._seen_codes: dict[int, int] = {}
        self._seen_keys: dict[int, int] = {}

    async def run(self, rows: Iterator[dict], report_path: Path,
                  progress: Callable[[int, Counter], Awaitable[None]] | None = None,
                  stop: asyncio.Event | None = None) -> LoadResult:
        """Loads chunk by chunk; with `stop` set, ends after the chunk in hand (`stopped`)."""
        result = LoadResult()
        report_path.parent.mkdir(parents=True, exist_ok=True)
        with open(report_path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(REPORT_HEADER)
            numbered = enumerate(rows, start=2)  # row 1 is the header
            # Parsing (openpyxl above all) is CPU work: keep it off the event loop.
            chunks = 0
            while chunk := await asyncio.to_thread(lambda: list(islice(numbered, self._chunk))):
                if chunks % ANALYZE_EVERY_CHUNKS == 1:
                    await self._refresh_statistics()
                chunks += 1
                lines = await self._load_chunk(chunk)
                writer.writerows(map(inert_row, lines))
                result.rows += len(chunk)
                result.counts.update(line[2] for line in lines)
                if progress:
                    await progress(result.rows, result.counts)
                if stop is not None and stop.is_set():
                    result.stopped = True
                    break
        return result

    async def _refresh_statistics(self) -> None:
        """A load grows the tables faster than autovacuum re-analyses them; with stale
        statistics PostgreSQL scans instead of using the indexes and each chunk gets slower."""
        async with self._sessions() as session, session.begin():
            await analyze(session, "counterparties", "external_refs")

    def _screen(self, number: int, row: dict) -> tuple[dict | None, list | None]:
        """Row-level checks that need no database: returns (values, None) or (None, report line)."""
        code = row.get("code")
        if row.get("_error"):
            return None, [number, code, "error", "", "", row["_error"]]
        if not row.get("name"):
            return None, [number, code, "error", "", "", "name is required"]
        if not code:
            return None, [number, "", "error", "", "", "code is required (the accounting system's own id)"]
        values = _prepare(row)
        too_long = [f"{field} ({len(value)} > {width})" for field, width in WIDTHS.items()
                    if (value := code if field == "code" else values.get(field)) and len(value) > width]
        if too_long:  # PostgreSQL would refuse the whole chunk's insert over one such value
            return None, [number, code, "error", "", " ".join(values["quality_flags"]),
                          f"longer than the registry holds, in characters: {', '.join(too_long)}"]
        if (first := self._seen_codes.get(hash(code))) is not None:
            return None, [number, code, "duplicate_in_file", "", "", f"code already on row {first}"]
        self._seen_codes[hash(code)] = number
        if values["inn"] and "inn_invalid" not in values["quality_flags"]:
            key = hash((values["inn"], values["kpp"]))
            if (first := self._seen_keys.get(key)) is not None:
                return None, [number, code, "duplicate_in_file", "", " ".join(values["quality_flags"]),
                              f"same INN and KPP as row {first}"]
            self._seen_keys[key] = number
        return {**values, "code": code}, None

    async def _load_chunk(self, chunk: list[tuple[int, dict]]) -> list[list]:
        lines: dict[int, list] = {}
        candidates: list[tuple[int, dict]] = []
        for number, row in chunk:
            values, line = self._screen(number, row)
            if line:
                lines[number] = line
            else:
                candidates.append((number, values))
        now = datetime.now(timezone.utc)
        c, refs = tables.counterparties, tables.external_refs
        async with self._sessions() as session, session.begin():
            codes = [v["code"] for _, v in candidates]
            by_code = dict((await session.execute(
                select(refs.c.external_id, refs.c.entity_id).where(
                    refs.c.entity_type == COUNTERPARTY, refs.c.system == self._system, refs.c.external_id.in_(codes))
            )).all()) if codes else {}
            known = {r["id"]: dict(r) for r in (await session.execute(
                select(c).where(c.c.id.in_(list(by_code.values()))))).mappings()} if by_code else {}
            # The records the file changes are read again, locked until the chunk commits:
            # a steward's verification or edit at this moment waits, so a record read as
            # pending is still pending when it is updated (unchanged ones stay unlocked).
            differing = sorted({by_code[v["code"]] for _, v in candidates if v["code"] in by_code
                                and any(known[by_code[v["code"]]].get(k) != v[k] for k in FIELDS)})
            if differing:
                known.update((r["id"], dict(r)) for r in (await session.execute(
                    select(c).where(c.c.id.in_(differing)).order_by(c.c.id).with_for_update())).mappings())
            inns = [v["inn"] for _, v in candidates if v["code"] not in by_code and v["inn"]]
            by_key: dict[tuple, list[str]] = {}
            if inns:
                for r in (await session.execute(select(c.c.id, c.c.inn, c.c.kpp).where(
                        c.c.inn.in_(inns), c.c.status != MERGED))).all():
                    by_key.setdefault((r.inn, r.kpp), []).append(r.id)
            new_records, new_refs, updates, history = [], [], [], []
            for number, v in candidates:
                flags = " ".join(v["quality_flags"])
                data = {k: v[k] for k in FIELDS}
                if v["code"] in by_code:
                    record = known[by_code[v["code"]]]
                    changed = {k: data[k] for k in FIELDS if record.get(k) != data[k]}
                    if not changed:
                        lines[number] = [number, v["code"], "unchanged", record["id"], flags, ""]
                        continue
                    if record["status"] != PENDING:  # verified data changes only by the steward's hand
                        lines[number] = [number, v["code"], "differs", record["id"], flags,
                                         f"the {record['status']} record differs in {', '.join(sorted(changed))}; "
                                         "left for the steward"]
                        continue
                    updates.append({"b_id": record["id"], **data, "quality_flags": v["quality_flags"],
                                    "normalized_name": v["normalized_name"],
                                    "match_name": v["match_name"], "updated_at": now})
                    history.append(self._history(record["id"], "bulk_updated",
                                                 {"code": v["code"], "changes": sorted(changed)}))
                    lines[number] = [number, v["code"], "updated", record["id"], flags, ""]
                    continue
                matches = by_key.get((v["inn"], v["kpp"]), []) if v["inn"] else []
                if len(matches) == 1:
                    new_refs.append(self._ref(matches[0], v["code"], now))
                    history.append(self._history(matches[0], "bulk_linked", {"code": v["code"]}))
                    lines[number] = [number, v["code"], "linked_existing", matches[0], flags,
                                     "identifiers match a registry record; the code was attached to it"]
                    continue
                record_id = str(uuid.uuid4())
                status = VERIFIED if self._verify_clean and not v["quality_flags"] else PENDING
                new_records.append({"id": record_id, **data, "status": status, "quality_flags": v["quality_flags"],
                                    "normalized_name": v["normalized_name"],
                                    "match_name": v["match_name"], "created_at": now, "updated_at": now})
                new_refs.append(self._ref(record_id, v["code"], now))
                history.append(self._history(record_id, "bulk_created", {"code": v["code"], "status": status}))
                message = ("several registry records share these identifiers; left for the steward"
                           if len(matches) > 1 else "")
                lines[number] = [number, v["code"], "created", record_id, flags, message]
            if new_records:
                await session.execute(insert(c), new_records)
                await write_name_keys(session, [(r["id"], r["name"], r["status"]) for r in new_records],
                                      replace=False)
            if new_refs:
                await session.execute(insert(refs), new_refs)
            if updates:
                await session.execute(update(c).where(c.c.id == bindparam("b_id")), updates)
                await write_name_keys(session, [(u["b_id"], u["name"], PENDING) for u in updates])
            await HistoryLog(session).append_many(history, at=now)
        return [lines[number] for number, _ in chunk]

    def _ref(self, entity_id: str, code: str, at) -> dict:
        return {"entity_type": COUNTERPARTY, "entity_id": entity_id, "system": self._system, "external_id": code,
                "created_at": at}

    def _history(self, entity_id: str, action: str, data: dict) -> dict:
        return {"entity_type": COUNTERPARTY, "entity_id": entity_id, "action": action, "actor": self._actor,
                "data": data}


async def start_job(session_factory, *, file_name: str, system: str, user_id: str) -> str:
    load_id = str(uuid.uuid4())
    now = datetime.now(timezone.utc)
    async with session_factory() as session, session.begin():
        await session.execute(insert(tables.bulk_loads).values(
            id=load_id, status="running", file_name=file_name[:255], system=system, created_by=user_id,
            started_at=now, progress_at=now, counts={}))
    return load_id


async def refuse_job(session_factory, load_id: str, error: str) -> None:
    """A load whose upload was refused (empty, too large): failed before it ran."""
    t = tables.bulk_loads
    async with session_factory() as session, session.begin():
        await session.execute(update(t).where(t.c.id == load_id).values(
            status="failed", error=error[:2000], finished_at=datetime.now(timezone.utc)))


async def _select(session_factory, query) -> list[dict]:
    async with session_factory() as session:
        return [dict(row) for row in (await session.execute(query)).mappings()]


async def get_job(session_factory, load_id: str, *, stale_after: float | None = None) -> dict | None:
    """The load, or None. With `stale_after`, a running load that has made no progress for
    that many seconds is marked failed first: the process running it stopped (a deploy's
    restart, a crash). Its chunks so far are committed; loading the file again finds those
    rows by their code and creates nothing twice."""
    rows = await _select(session_factory, select(tables.bulk_loads).where(tables.bulk_loads.c.id == load_id))
    return await _checked(session_factory, rows[0], stale_after) if rows else None


async def recent_jobs(session_factory, *, limit: int, stale_after: float | None = None) -> list[dict]:
    """The latest loads, newest first; running ones checked as `get_job` checks them."""
    t = tables.bulk_loads
    rows = await _select(session_factory, select(t).order_by(t.c.started_at.desc(), t.c.id).limit(limit))
    return [await _checked(session_factory, row, stale_after) for row in rows]


async def _checked(session_factory, row: dict, stale_after: float | None) -> dict:
    """The load as read, or, if it is running but quiet past `stale_after`, marked failed."""
    if stale_after is None or row["status"] != "running":
        return row
    since = row["progress_at"] or row["started_at"]  # loads started before migration 0012 have none
    if datetime.now(timezone.utc) - since <= timedelta(seconds=stale_after):
        return row
    t = tables.bulk_loads
    same_progress = t.c.progress_at == since if row["progress_at"] else t.c.progress_at.is_(None)
    error = _interrupted(f"no progress for over {stale_after:.0f} s after {row['rows_done']} rows (the process "
                         "running it stopped)")
    async with session_factory() as session, session.begin():
        taken = (await session.execute(
            update(t).where(t.c.id == row["id"], t.c.status == "running", same_progress)
            .values(status="failed", error=error, finished_at=datetime.now(timezone.utc)))).rowcount
    if taken:
        log.warning("bulk_load_interrupted", load_id=row["id"], rows_done=row["rows_done"])
    return (await _select(session_factory, select(t).where(t.c.id == row["id"])))[0]


def _interrupted(why: str) -> str:
    return (f"interrupted: {why}; load the file again: rows already loaded are found by their code, not "
            "created twice")


async def run_job(session_factory, *, load_id: str, path: Path, kind: str, system: str, actor: str,
                  verify_clean: bool, report_path: Path, chunk_size: int = 5000,
                  stop: asyncio.Event | None = None, stopped_by: str = "the ECM service") -> LoadResult | None:
    """Runs a load and keeps its row current; a failure is recorded, not raised. With
    `stop` set (its service stopping) it ends after the chunk in hand and records itself
    interrupted there: the committed chunks and their lines of the report stay."""
    t = tables.bulk_loads

    async def progress(rows: int, counts: Counter) -> None:
        async with session_factory() as session, session.begin():
            await session.execute(update(t).where(t.c.id == load_id).values(
                rows_done=rows, counts=dict(counts), progress_at=datetime.now(timezone.utc)))

    try:
        loader = BulkLoader(session_factory, system=system, actor=actor, verify_clean=verify_clean,
                            chunk_size=chunk_size)
        result = await loader.run(read_rows(path, kind), report_path, progress, stop)
        # error cleared: a load that was only slow may have been reported interrupted meanwhile
        final = {"status": "done", "rows_done": result.rows, "counts": dict(result.counts), "error": None}
        if result.stopped:
            final.update(status="failed", error=_interrupted(f"{stopped_by} stopped after {result.rows} rows"))
            log.warning("bulk_load_interrupted", load_id=load_id, rows_done=result.rows, reason=f"{stopped_by} stopped")
    except Exception as exc:  # an unreadable file, a database error: say so on the job
        result, final = None, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    async with session_factory() as session, session.begin():
        await session.execute(update(t).where(t.c.id == load_id).values(
            finished_at=datetime.now(timezone.utc), report_path=str(report_path), **final))
    return result


def spawn_job(session_factory, **job) -> asyncio.Task:
    """Runs `run_job` in the background of this process; the service's stop ends it."""
    return REQUEST_JOBS.spawn(lambda stop: run_job(session_factory, stop=stop, **job))
