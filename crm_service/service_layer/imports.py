"""Spreadsheet import of organizations (and their contact person): column mapping
suggested from the header, a dry run that counts what would happen, then apply. A bad
row never aborts the import; every row lands in the report with its outcome.

Re-importing the same file updates instead of duplicating: each row has a stable key —
INN+KPP when there is an INN, else a mapped external id, else a fingerprint of the row —
kept in `import_keys`."""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import structlog
from sqlalchemy import insert, select, update

from crm_service.adapters import tables
from crm_service.domain.hints import identifier_hints
from crm_service.domain.names import HINT_THRESHOLD, name_key, normalize, similarity
from infra.spreadsheets import UnreadableFile, clean_cell, header_key, read_table

log = structlog.get_logger()

CHUNK = 1000
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


# Column sizes of `organizations`: longer cells are cut, never a reason to fail the import.
LIMITS = {"name": 500, "inn": 20, "kpp": 20, "ogrn": 20, "legal_form": 100, "website": 300, "region": 200,
          "category": 200, "activity_type": 200, "org_group": 200, "lead_source": 200}


def org_values(values: dict) -> dict:
    out = {k: (values[k][:LIMITS[k]] if k in LIMITS and values.get(k) else values.get(k)) for k in ORG_COLUMNS}
    out["phones"] = [values["phone"]] if values.get("phone") else []
    out["emails"] = [values["email"]] if values.get("email") else []
    out["addresses"] = [{"kind": "legal", "text": values["address"]}] if values.get("address") else []
    return out


def parsed_rows_path(report_path: Path, import_id: str) -> Path:
    return report_path.parent / f"{import_id}.rows.jsonl"


def _sheet_rows(path: Path, columns: dict[int, str], cache: Path | None):
    """(row number, cells of the mapped columns) from the spreadsheet; the dry run keeps
    them, cleaned, in `cache` so that the apply does not parse the file a second time."""
    indices = sorted(columns)
    rows = read_table(path)
    next(rows, None)  # the header
    out = open(cache, "w", encoding="utf-8") if cache else None
    try:
        for number, raw in enumerate(rows, start=2):
            cells = [clean_cell(raw[i]) if i < len(raw) else None for i in indices]
            # A row with content only in formulas or unmapped columns is still a row.
            filled = any(c is not None and str(c).strip() != "" for c in raw)
            if out:
                out.write(json.dumps([number, cells, filled], ensure_ascii=False) + "\n")
            yield number, cells, filled
    finally:
        if out:
            out.close()


def _cached_rows(cache: Path):
    with open(cache, encoding="utf-8") as rows:
        for line in rows:
            number, cells, filled = json.loads(line)
            yield number, cells, filled


async def run_import(session_factory, *, import_id: str, path: Path, mapping: dict[str, str], user_id: str,
                     apply: bool, report_path: Path) -> dict:
    """The dry run (apply=False) writes nothing but the job's progress, its report and
    the parsed rows the apply then reads (the mapping cannot change in between)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    columns = {position: mapping[str(index)] for position, index in enumerate(sorted(int(k) for k in mapping))}
    cache = parsed_rows_path(report_path, import_id)
    if apply and cache.exists():
        source = _cached_rows(cache)
    else:
        source = _sheet_rows(path, {int(k): v for k, v in mapping.items()}, None if apply else cache)
    started = datetime.now(timezone.utc)
    seen: set[str] = set()
    done = 0
    try:
        with open(report_path, "w", newline="", encoding="utf-8-sig") as out:
            report = csv.writer(out)
            report.writerow(REPORT_COLUMNS)
            chunk = []
            for row in source:
                chunk.append(row)
                if len(chunk) == CHUNK:
                    await _chunk(session_factory, chunk, columns, seen, counts, report, user_id, apply, started)
                    done += len(chunk)
                    chunk = []
                    await _progress(session_factory, import_id, done, counts)
            if chunk:
                await _chunk(session_factory, chunk, columns, seen, counts, report, user_id, apply, started)
                done += len(chunk)
        status = "applied" if apply else "dry_run"
        await _progress(session_factory, import_id, done, counts, status=status, total=done)
    except Exception as exc:
        # The class only: a driver's message may quote cell values (personal data).
        log.error("import_failed", import_id=import_id, error=type(exc).__name__)
        await _progress(session_factory, import_id, done, counts, status="failed", error=str(exc)[:1000])
        raise
    finally:
        if apply:
            cache.unlink(missing_ok=True)
    return counts


async def _progress(session_factory, import_id, done, counts, *, status=None, total=None, error=None):
    t = tables.imports
    values = {"rows_done": done, "counts": dict(counts)}
    if status:
        values.update(status=status, finished_at=datetime.now(timezone.utc), error=error)
    if total is not None:
        values["rows_total"] = total
    async with session_factory() as session, session.begin():
        await session.execute(update(t).where(t.c.id == import_id).values(**values))


async def _chunk(session_factory, chunk, columns, seen, counts, writer, user_id, apply, started) -> None:
    """One chunk in one transaction; its report lines are written in row order."""
    lines: list[list] = []
    try:
        await _process(session_factory, chunk, columns, seen, counts, lines, user_id, apply, started)
    finally:
        writer.writerows(sorted(lines, key=lambda line: line[0]))


class _Lines:
    def __init__(self, lines: list):
        self.lines = lines

    def writerow(self, row: list) -> None:
        self.lines.append(row)


async def _process(session_factory, chunk, columns, seen, counts, lines, user_id, apply, started) -> None:
    report = _Lines(lines)
    parsed = []
    for number, cells, filled in chunk:
        values = {field: cells[i] for i, field in columns.items()}
        if not filled:
            continue  # an empty line is not a row
        if not values.get("name"):
            counts["error"] += 1
            report.writerow([number, "error", None, None, None, None,
                             "no organization name in this row (formulas are not read as data)"])
            continue
        key = row_key(values)
        if key in seen:
            counts["duplicate_in_file"] += 1
            report.writerow([number, "duplicate_in_file", None, key, None, None,
                             "the same organization appears earlier in this file"])
            continue
        seen.add(key)
        parsed.append((number, values, key))
    if not parsed:
        return
    o, k = tables.organizations, tables.import_keys
    async with session_factory() as session, session.begin():
        known = dict((await session.execute(
            select(k.c.key, k.c.organization_id).where(k.c.key.in_([key for _, _, key in parsed])))).all())
        existing = {r["id"]: r for r in (await session.execute(
            select(o).where(o.c.id.in_(list(known.values()))))).mappings()}
        inns = {v["inn"] for _, v, key in parsed if v.get("inn") and key not in known}
        keys = {name_key(v["name"]) for _, v, key in parsed if key not in known} - {None}
        # Possible duplicates among the organizations that existed before this import
        # (repeats within the file are found by their keys), by INN or blocking key.
        neighbours = (await session.execute(
            select(o.c.id, o.c.name, o.c.inn).where((o.c.inn.in_(inns)) | (o.c.name_key.in_(keys)),
                                                    o.c.merged_into.is_(None), o.c.created_at < started)
            .limit(NEIGHBOURS_PER_CHUNK))).all() if inns or keys else []
        by_inn = {inn: other_id for other_id, _, inn in neighbours if inn}
        by_key: dict[str, list[tuple[str, str]]] = {}
        for other_id, other_name, _ in neighbours:
            by_key.setdefault(name_key(other_name), []).append((other_id, other_name))
        now = datetime.now(timezone.utc)
        new_orgs, new_keys, updates, history, contacts = [], [], [], [], []
        for number, values, key in parsed:
            hints = "; ".join(identifier_hints(inn=values.get("inn"), kpp=values.get("kpp"), ogrn=values.get("ogrn")))
            fields = org_values(values)
            if key in known and known[key] in existing:
                org_id, current = known[key], existing[known[key]]
                changed = {f: v for f, v in fields.items() if v not in (None, []) and current[f] != v}
                outcome = "update" if changed else "unchanged"
                if changed:
                    updates.append((org_id, {**changed, "name_key": name_key(fields["name"]), "updated_at": now}))
                    history.append(dict(organization_id=org_id, at=now, kind="imported", actor_id=user_id,
                                        detail={"fields": sorted(changed)}))
                report.writerow([number, outcome, org_id, key, None, hints, None])
                counts[outcome] += 1
                continue
            duplicate = _possible_duplicate(values, by_inn, by_key)
            org_id = str(uuid.uuid4())
            outcome = "possible_duplicate" if duplicate else "create"
            counts[outcome] += 1
            report.writerow([number, outcome, org_id if apply else None, key, duplicate, hints,
                             "created; looks like an existing organization" if duplicate else None])
            new_orgs.append(dict(id=org_id, created_by=user_id, owner_id=user_id, created_at=now,
                                 name_key=name_key(fields["name"]), **fields))
            new_keys.append(dict(key=key, organization_id=org_id))
            history.append(dict(organization_id=org_id, at=now, kind="imported", actor_id=user_id, detail={}))
            if values.get("contact_name"):
                contacts.append(dict(id=str(uuid.uuid4()), organization_id=org_id, full_name=values["contact_name"],
                                     phones=[], emails=[], important_dates=[], owner_id=user_id, created_at=now))
        if not apply:
            await session.rollback()
            return
        if new_orgs:
            await session.execute(insert(o), new_orgs)
            await session.execute(insert(k), new_keys)
        if contacts:
            await session.execute(insert(tables.contacts), contacts)
        for org_id, values in updates:
            await session.execute(update(o).where(o.c.id == org_id).values(**values))
        if history:
            await session.execute(insert(tables.organization_history), history)


def _possible_duplicate(values: dict, by_inn: dict, by_key: dict) -> str | None:
    if values.get("inn") and values["inn"] in by_inn:
        return by_inn[values["inn"]]
    for other_id, other_name in by_key.get(name_key(values["name"]), ()):
        if similarity(values["name"], other_name) >= HINT_THRESHOLD:
            return other_id
    return None
