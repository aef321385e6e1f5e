"""Reading accounting-system exports row by row: CSV (UTF-8 or Windows-1251, comma or
semicolon), XLSX (openpyxl in read-only mode) and JSON lines. Headers are mapped to
registry fields by Russian and English synonyms; files are never loaded whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from infra.spreadsheets import UndecodableRow, UnreadableFile, clean_cell, header_key, read_table

__all__ = ["FIELD_SYNONYMS", "UnreadableFile", "map_header", "read_rows"]

FIELD_SYNONYMS = {
    "code": ("code", "код", "external_code", "код 1с", "id"),
    "name": ("name", "наименование", "полное наименование", "full_name", "company"),
    "short_name": ("short_name", "краткое наименование", "сокращенное наименование"),
    "legal_form": ("legal_form", "опф", "организационно-правовая форма", "форма"),
    "inn": ("inn", "инн", "tax id", "taxpayer number"),
    "kpp": ("kpp", "кпп"),
    "ogrn": ("ogrn", "огрн", "огрнип"),
    "vat": ("vat", "vat_number", "ндс номер"),
    "country": ("country", "страна"),
    "address": ("address", "адрес", "юридический адрес", "legal_address"),
}
_LOOKUP = {header_key(syn): field for field, syns in FIELD_SYNONYMS.items() for syn in syns}


def map_header(header: list) -> dict[int, str]:
    mapping = {}
    for index, title in enumerate(header):
        field = _LOOKUP.get(header_key(title))
        if field and field not in mapping.values():
            mapping[index] = field
    if "name" not in mapping.values():
        raise UnreadableFile(f"no name column among {header!r}; expected one of {FIELD_SYNONYMS['name']}")
    return mapping


def _rows_from_table(rows: Iterator[list]) -> Iterator[dict]:
    try:
        header = next(rows)
    except StopIteration:
        raise UnreadableFile("the file is empty") from None
    mapping = map_header(list(header))
    for raw in rows:
        if isinstance(raw, UndecodableRow):
            yield {"_error": raw.reason}
            continue
        yield {field: clean_cell(raw[i]) if i < len(raw) else None for i, field in mapping.items()}


def read_rows(path: Path, kind: str | None = None) -> Iterator[dict]:
    """Yields {field: value} per data row, in file order."""
    kind = kind or path.suffix.lower().lstrip(".")
    if kind in ("csv", "xlsx"):
        yield from _rows_from_table(read_table(path, kind))
    elif kind in ("jsonl", "ndjson"):
        # Bytes, decoded line by line: one line in another encoding is that row's error, not the file's.
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    yield {"_error": f"line {number} is not UTF-8 text (JSON lines are UTF-8)"}
                    continue
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    yield {"_error": f"line {number} is not JSON"}
                    continue
                if not isinstance(item, dict):
                    yield {"_error": f"line {number} is not a JSON object"}
                    continue
                mapped = {_LOOKUP.get(header_key(k)): clean_cell(v) for k, v in item.items()}
                mapped.pop(None, None)
                yield mapped
    else:
        raise UnreadableFile(f"unsupported file type {kind!r}: use csv, xlsx or jsonl")
