"""Spreadsheet import of organizations (and their contact person): column mapping
suggested from the header, a dry run that counts what would happen, then apply. A bad
row never aborts the import; every row lands in the report with its outcome.

Re-importing the same file updates instead of duplicating: each row has a stable key —
INN+KPP when there is an INN, else a mapped external id, else a fingerprint of the row —
kept in `import_keys`."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import os
import time
import uuid
from collections import deque
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import structlog
from sqlalchemy import select, update

from crm_service.adapters import tables
from crm_service.domain.hints import identifier_hints
from crm_service.domain.model import filled_from
from crm_service.domain.names import HINT_THRESHOLD, name_key, normalize, search_form, similarity
from infra.db import insert_rows, one_of
from infra.process_reader import JsonLinesReader, ProcessReader, json_line
from infra.spreadsheets import UnreadableFile, clean_cell, header_key, inert_row, mapped_rows, read_table

log = structlog.get_logger()

CHUNK = 1000
PROGRESS_SECONDS = 0.5
# Chunks in the database at once on PostgreSQL (SQLite takes one writer at a time).
IN_FLIGHT = 2
# Bounds the duplicate-hint work per chunk when a blocking key is very common.
NEIGHBOURS_PER_CHUNK = 20_000
FIELDS = {
    "name": ("наименование", "название", "организация", "компания", "полное наименование", "company", "name",
             "organization", "organisation", "company name", "account name"),
    "inn": ("инн", "inn", "tax id", "taxpayer id", "tin"),
    "kpp": ("кпп", "kpp"),
    "ogrn": ("огрн", "огрнип", "ogrn", "registration number"),
    "legal_form": ("опф", "форма", "организационно-правовая форма", "legal form"),
    "phone": ("телефон", "тел", "телефоны", "phone", "telephone", "tel", "mobile"),
    "email": ("e-mail", "email", "почта", "эл почта", "электронная почта", "mail"),
    "website": ("сайт", "website", "web", "url", "site"),
    "address": ("адрес", "юридический адрес", "address"),
    "region": ("регион", "город", "region", "city"),
    "category": ("категория", "category", "сегмент", "segment"),
    "activity_type": ("вид деятельности", "отрасль", "industry", "activity"),
    "org_group": ("группа", "group"),
    "lead_source": ("источник", "source", "lead source"),
    "notes": ("комментарий", "примечание", "заметки", "notes", "comment"),
    "external_id": ("код", "внешний код", "id", "external id", "code"),
    "contact_name": ("контактное лицо", "контакт", "фио", "contact", "contact name", "contact person"),
}
_LOOKUP = {header_key(s): field for field, synonyms in FIELDS.items() for s in synonyms}
OUTCOMES = ("create", "update", "unchanged", "possible_duplicate", "duplicate_in_file", "error")
REPORT_COLUMNS = ["row", "outcome", "organization_id", "key", "duplicate_of", "hints", "message"]


def suggest_mapping(header: list) -> dict[str, str]:
    """{column index: field} from the header's Russian or English titles."""
    mapping = {}
    for index, title in enumerate(header):
        field = _LOOKUP.get(header_key(title))
        if field and field not in mapping.values():
            mapping[str(index)] = field
    return mapping


def read_header(path: Path) -> list[str]:
    for row in read_table(path):
        return [str(clean_cell(c) or "") for c in row]
    raise UnreadableFile("the file is empty")


def validate_mapping(mapping: dict[str, str], header: list[str]) -> dict[str, str]:
    unknown = sorted(set(mapping.values()) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown fields {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    bad = [k for k in mapping if not k.isdigit() or int(k) >= len(header)]
    if bad:
        raise ValueError(f"columns {', '.join(bad)} are not in the file (it has {len(header)})")
    if "name" not in mapping.values():
        raise ValueError("map one column to name: an organization needs at least its name")
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("each field may be mapped from one column only")
    return mapping


def row_key(values: dict) -> str:
    if values.get("inn"):
        return f"inn:{values['inn']}:{values.get('kpp') or ''}"
    if values.get("external_id"):
        return f"ext:{values['external_id'][:150]}"
    basis = "|".join([normalize(values.get("name") or ""), values.get("phone") or "", values.get("email") or ""])
    return "fp:" + hashlib.sha256(basis.encode()).hexdigest()[:40]


ORG_COLUMNS = ("name", "inn", "kpp", "ogrn", "legal_form", "website", "region", "category", "activity_type",
               "org_group", "lead_source", "notes")


# Column sizes of `organizations` (and the contact's name): longer cells are cut, never a
# reason to fail the import (PostgreSQL refuses a longer value, and with it the chunk).
LIMITS = {k: tables.organizations.c[k].type.length for k in ORG_COLUMNS
          if getattr(tables.organizations.c[k].type, "length", None)}
CONTACT_NAME_WIDTH = tables.contacts.c.full_name.type.length


def org_values(values: dict) -> dict:
    out = {k: (values[k][:LIMITS[k]] if k in LIMITS and values.get(k) else values.get(k)) for k in ORG_COLUMNS}
    out["phones"] = [values["phone"]] if values.get("phone") else []
    out["emails"] = [values["email"]] if values.get("email") else []
    out["addresses"] = [{"kind": "legal", "text": values["address"]}] if values.get("address") else []
    return out


def parsed_rows_path(report_path: Path, import_id: str) -> Path:
    # ".prepared-v2": rows as `prepare` makes them (v2: with the normalised name); a cache
    # of another form is never read (an apply then reads the file again).
    return report_path.parent / f"{import_id}.prepared-v2.jsonl"


UNREADABLE = "_unreadable"  # in a prepared row's values: why the file's row could not be read


def prepare(number: int, cells: list | str, filled: bool, columns: dict[int, str]) -> list:
    """What a row needs no database for, worked out once (the dry run keeps it for the
    apply): [row number, filled, values, key, identifier hints, organization columns,
    name key, normalised name]. `cells` is a reason instead for a CSV row that is no text
    (`UndecodableRow`)."""
    if isinstance(cells, str):
        return [number, filled, {UNREADABLE: cells}, None, None, None, None, None]
    values = {field: cells[i] for i, field in columns.items()}
    if not filled or not values.get("name"):
        return [number, filled, values, None, None, None, None, None]
    hints = "; ".join(identifier_hints(inn=values.get("inn"), kpp=values.get("kpp"), ogrn=values.get("ogrn")))
    fields = org_values(values)
    return [number, filled, values, row_key(values), hints, fields, name_key(fields["name"]),
            search_form(fields["name"])]


class RunTakenOver(Exception):
    """Another run owns the job now: this one stalled long enough to be taken for stopped."""


async def run_import(session_factory, *, import_id: str, path: Path, mapping: dict[str, str], user_id: str,
                     apply: bool, report_path: Path, run_id: str | None = None,
                     stop: asyncio.Event | None = None) -> dict:
    """The dry run (apply=False) writes nothing but the job's progress, its report and
    the prepared rows the apply then reads instead of parsing the file a second time (the
    mapping cannot change in between: a new mapping needs a new dry run).

    The file is read in another process while this one prepares, looks up and writes
    what was read, a chunk per transaction; on PostgreSQL two chunks at once, so that one
    chunk's statements run while the next is worked on. Chunks never wait for each
    other's rows: repeats within the file are found here, in file order, before a chunk
    goes to the database, and duplicate hints look only at organizations older than the
    import. The report and the progress follow the file's order.

    `run_id`: the run that owns the job (import_jobs.start). Its progress writes only
    touch the job while it still owns it; once another run has taken over, this one
    stops (RunTakenOver) and leaves the job alone.

    `stop` set (its service stopping): no further chunk is read, the chunks in flight
    finish, and the job reads failed, interrupted after the rows it got through."""
    counts = dict.fromkeys(OUTCOMES, 0)
    indices = sorted(int(k) for k in mapping)
    columns = {position: mapping[str(index)] for position, index in enumerate(indices)}
    cache = parsed_rows_path(report_path, import_id)
    from_cache = apply and cache.exists()
    # A dry run cut short leaves no cache; each run writes its own, so that a run taken
    # over never touches its successor's.
    partial = cache.with_name(cache.name + (f".{run_id}" if run_id else "") + ".part")
    in_flight = IN_FLIGHT if _dialect(session_factory) == "postgresql" else 1
    started = datetime.now(timezone.utc)
    seen: set[str] = set()
    pending: deque[_Chunk] = deque()
    progress = _Progress(session_factory, import_id, run_id)
    done, stopped = 0, False
    try:
        with open(report_path, "w", newline="", encoding="utf-8-sig") as out, \
                (open(partial, "wb") if not apply else nullcontext()) as keep:
            report = csv.writer(out)
            report.writerow(REPORT_COLUMNS)
            try:
                # The apply reads the dry run's rows here (parsing them costs less than
                # passing them between processes); the file is read in a process of its own.
                reader = (JsonLinesReader(cache, chunk=CHUNK) if from_cache
                          else ProcessReader(mapped_rows, (path, indices), chunk=CHUNK))
                async with reader:
                    async for items in reader:
                        if stop is not None and stop.is_set():
                            stopped = True
                            break
                        rows = items if from_cache else [prepare(n, cells, filled, columns)
                                                         for n, cells, filled in items]
                        if keep:
                            keep.writelines(json_line(row) for row in rows)
                        chunk = _Chunk(rows, seen)
                        chunk.task = asyncio.create_task(
                            _store(session_factory, chunk, user_id=user_id, apply=apply, started=started))
                        pending.append(chunk)
                        while len(pending) >= in_flight or (pending and pending[0].task.done()):
                            done += await pending.popleft().finish(report, counts)
                            await progress.report(done, counts)
                while pending:
                    done += await pending.popleft().finish(report, counts)
                    await progress.report(done, counts)
            finally:
                for chunk in pending:
                    chunk.task.cancel()
                await asyncio.gather(*(chunk.task for chunk in pending), return_exceptions=True)
        if stopped:
            partial.unlink(missing_ok=True)
            log.warning("import_interrupted", import_id=import_id, rows_done=done, reason="service stopping")
            await _progress(session_factory, import_id, done, counts, status="failed", run_id=run_id,
                            error=f"interrupted: the CRM service stopped after {done} rows; run the dry run again")
            return counts
        if not apply:
            if run_id is not None and not await _progress(session_factory, import_id, done, counts, run_id=run_id):
                raise RunTakenOver(import_id)  # the cache is the job's owner's to write
            os.replace(partial, cache)
        status = "applied" if apply else "dry_run"
        await _progress(session_factory, import_id, done, counts, status=status, total=done, run_id=run_id)
    except RunTakenOver:
        log.warning("import_run_taken_over", import_id=import_id)
        partial.unlink(missing_ok=True)
        raise
    except Exception as exc:
        # The class only: a driver's message may quote cell values (personal data).
        log.error("import_failed", import_id=import_id, error=type(exc).__name__)
        partial.unlink(missing_ok=True)
        await _progress(session_factory, import_id, done, counts, status="failed", error=str(exc)[:1000],
                        run_id=run_id)
        raise
    finally:
        if apply:
            cache.unlink(missing_ok=True)
    return counts


class _Progress:
    """The job's row count and counts as it goes, written at most every PROGRESS_SECONDS."""

    def __init__(self, session_factory, import_id: str, run_id: str | None):
        self.session_factory, self.import_id, self.run_id = session_factory, import_id, run_id
        self.last = 0.0

    async def report(self, done: int, counts: dict) -> None:
        if time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.last = time.monotonic()
            if not await _progress(self.session_factory, self.import_id, done, counts, run_id=self.run_id):
                raise RunTakenOver(self.import_id)


def _dialect(session_factory) -> str:
    return session_factory().bind.dialect.name


async def _progress(session_factory, import_id, done, counts, *, status=None, total=None, error=None,
                    run_id=None) -> bool:
    """Writes the job's progress (and its end, with `status`); False when `run_id` no
    longer owns the job."""
    t = tables.imports
    now = datetime.now(timezone.utc)
    values = {"rows_done": done, "counts": dict(counts), "progress_at": now}
    if status:
        values.update(status=status, finished_at=now, error=error)
    if total is not None:
        values["rows_total"] = total
    owned = [t.c.id == import_id] + ([t.c.run_id == run_id] if run_id is not None else [])
    async with session_factory() as session, session.begin():
        return (await session.execute(update(t).where(*owned).values(**values))).rowcount > 0


class _Chunk:
    """One chunk of prepared rows: its repeats and rows without a name are settled at
    once (in file order, against the rows seen so far); the rest (`parsed`) go to the
    database in one transaction (`_store`). Its report lines and counts join the
    import's only when that transaction succeeded."""

    def __init__(self, rows: list, seen: set[str]):
        self.size = len(rows)
        self.lines: list[list] = []
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.parsed: list[tuple] = []
        self.task: asyncio.Task | None = None
        for number, filled, values, key, hints, fields, key_of_name, norm in rows:
            if not filled:
                continue  # an empty line is not a row
            if values.get(UNREADABLE):
                self.outcome("error", [number, "error", None, None, None, None, values[UNREADABLE]])
            elif not values.get("name"):
                self.outcome("error", [number, "error", None, None, None, None,
                                       "no organization name in this row (formulas are not read as data)"])
            elif key in seen:
                self.outcome("duplicate_in_file", [number, "duplicate_in_file", None, key, None, None,
                                                   "the same organization appears earlier in this file"])
            else:
                seen.add(key)
                self.parsed.append((number, values, key, hints, fields, key_of_name, norm))

    def outcome(self, outcome: str, line: list) -> None:
        self.counts[outcome] += 1
        self.lines.append(line)

    async def finish(self, report, counts: dict) -> int:
        await self.task
        report.writerows(inert_row(line) for line in sorted(self.lines, key=lambda line: line[0]))
        for outcome, count in self.counts.items():
            counts[outcome] += count
        return self.size


async def _store(session_factory, chunk: _Chunk, *, user_id: str, apply: bool, started: datetime) -> None:
    parsed = chunk.parsed
    if not parsed:
        return
    o, k = tables.organizations, tables.import_keys
    async with session_factory() as session, session.begin():
        dialect = session.bind.dialect
        known = dict((await session.execute(
            select(k.c.key, k.c.organization_id).where(one_of(k.c.key, [row[2] for row in parsed], dialect)))).all())
        existing = {r["id"]: r for r in (await session.execute(
            select(o).where(one_of(o.c.id, known.values(), dialect)))).mappings()} if known else {}
        # An organization merged since an earlier import: its rows go to the survivor.
        while pointers := {r["merged_into"] for r in existing.values() if r["merged_into"]} - existing.keys():
            existing.update((r["id"], r) for r in (await session.execute(
                select(o).where(one_of(o.c.id, pointers, dialect)))).mappings())
        inns = {v["inn"] for _, v, key, *_ in parsed if v.get("inn") and key not in known}
        keys = {row[5] for row in parsed if row[2] not in known} - {None}
        # Possible duplicates among the organizations that existed before this import
        # (repeats within the file are found by their keys), by INN or blocking key.
        neighbours = (await session.execute(
            select(o.c.id, o.c.name, o.c.inn)
            .where(one_of(o.c.inn, inns, dialect) | one_of(o.c.name_key, keys, dialect),
                   o.c.merged_into.is_(None), o.c.created_at < started)
            .limit(NEIGHBOURS_PER_CHUNK))).all() if inns or keys else []
        by_inn = {inn: other_id for other_id, _, inn in neighbours if inn}
        by_key: dict[str, list[tuple[str, str]]] = {}
        for other_id, other_name, _ in neighbours:
            by_key.setdefault(name_key(other_name), []).append((other_id, other_name))
        now = datetime.now(timezone.utc)
        new_orgs, new_keys, updates, history, contacts = [], [], [], [], []
        for number, values, key, hints, fields, key_of_name, norm in parsed:
            if key in known and known[key] in existing:
                org_id, current = _survivor(existing, known[key])
                if org_id == known[key]:
                    changed = {f: v for f, v in fields.items() if v not in (None, []) and current[f] != v}
                    message = None
                else:  # as the merge itself: the survivor's empty fields are filled, nothing overwritten
                    changed = filled_from(current, fields, fields)
                    message = (f"organization {known[key]} was merged into this one: "
                               "its empty fields are filled from the row")
                outcome = "update" if changed else "unchanged"
                if changed:
                    updates.append((org_id, {**changed, "updated_at": now,
                                             **({"name_key": key_of_name, "name_norm": norm}
                                                if message is None else {})}))
                    history.append(dict(organization_id=org_id, at=now, kind="imported", actor_id=user_id,
                                        detail={"fields": sorted(changed)}))
                chunk.outcome(outcome, [number, outcome, org_id, key, None, hints, message])
                continue
            duplicate = _possible_duplicate(values, key_of_name, by_inn, by_key)
            org_id = str(uuid.uuid4()) if apply else None
            outcome = "possible_duplicate" if duplicate else "create"
            chunk.outcome(outcome, [number, outcome, org_id, key, duplicate, hints,
                                    "created; looks like an existing organization" if duplicate else None])
            if not apply:
                continue
            new_orgs.append(dict(id=org_id, created_by=user_id, owner_id=user_id, created_at=now,
                                 name_key=key_of_name, name_norm=norm, **fields))
            new_keys.append(dict(key=key, organization_id=org_id))
            history.append(dict(organization_id=org_id, at=now, kind="imported", actor_id=user_id, detail={}))
            if values.get("contact_name"):
                contacts.append(dict(id=str(uuid.uuid4()), organization_id=org_id,
                                     full_name=values["contact_name"][:CONTACT_NAME_WIDTH],
                                     phones=[], emails=[], important_dates=[], owner_id=user_id, created_at=now))
        if not apply:
            await session.rollback()
            return
        await insert_rows(session, o, new_orgs)
        await insert_rows(session, k, new_keys)
        await insert_rows(session, tables.contacts, contacts)
        for org_id, values in updates:
            await session.execute(update(o).where(o.c.id == org_id).values(**values))
        await insert_rows(session, tables.organization_history, history)


def _survivor(existing: dict, org_id: str) -> tuple[str, dict]:
    """The organization a row keyed to `org_id` now belongs to: itself, or the one it was
    merged into (followed through later merges)."""
    seen = {org_id}
    while (pointer := existing[org_id]["merged_into"]) and pointer in existing and pointer not in seen:
        org_id = pointer
        seen.add(org_id)
    return org_id, existing[org_id]


def _possible_duplicate(values: dict, key_of_name: str | None, by_inn: dict, by_key: dict) -> str | None:
    if values.get("inn") and values["inn"] in by_inn:
        return by_inn[values["inn"]]
    for other_id, other_name in by_key.get(key_of_name, ()):
        if similarity(values["name"], other_name) >= HINT_THRESHOLD:
            return other_id
    return None
