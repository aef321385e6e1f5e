"""Reading accounting-system exports row by row: CSV (UTF-8 or Windows-1251, comma or
semicolon), XLSX (openpyxl in read-only mode) and JSON lines. Headers are mapped to
registry fields by Russian and English synonyms; files are never loaded whole."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

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
def _header_key(title) -> str:
    return " ".join(str(title or "").strip().lower().replace("ё", "е").replace("_", " ").split())


_LOOKUP = {_header_key(syn): field for field, syns in FIELD_SYNONYMS.items() for syn in syns}


class UnreadableFile(Exception):
    pass


def map_header(header: list) -> dict[int, str]:
    mapping = {}
    for index, title in enumerate(header):
        field = _LOOKUP.get(_header_key(title))
        if field and field not in mapping.values():
            mapping[index] = field
    if "name" not in mapping.values():
        raise UnreadableFile(f"no name column among {header!r}; expected one of {FIELD_SYNONYMS['name']}")
    return mapping


def _cell(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # spreadsheets turn ИНН into numbers
    text = str(value).strip()
    if text.startswith("="):
        return None  # formulas are not data
    return text[:1000] or None


def _rows_from_table(rows: Iterator[list]) -> Iterator[dict]:
    try:
        header = next(rows)
    except StopIteration:
        raise UnreadableFile("the file is empty") from None
    mapping = map_header(list(header))
    for raw in rows:
        yield {field: _cell(raw[i]) if i < len(raw) else None for i, field in mapping.items()}


def _csv_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as probe:
        head = probe.read(65536)
    for encoding in ("utf-8-sig", "cp1251"):
        try:
            codecs.decode(head, encoding)
            return open(path, encoding=encoding, newline="", errors="strict")
        except UnicodeDecodeError:
            continue
    raise UnreadableFile("the CSV is neither UTF-8 nor Windows-1251")


def read_rows(path: Path, kind: str | None = None) -> Iterator[dict]:
    """Yields {field: value} per data row, in file order."""
    kind = kind or path.suffix.lower().lstrip(".")
    if kind == "csv":
        handle = _csv_text(path)
        with handle:
            sample = handle.read(4096)
            handle.seek(0)
            delimiter = ";" if sample.count(";") > sample.count(",") else ","
            yield from _rows_from_table(csv.reader(handle, delimiter=delimiter))
    elif kind == "xlsx":
        from openpyxl import load_workbook

        try:
            book = load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:
            raise UnreadableFile(f"not a readable XLSX file: {exc}") from exc
        try:
            yield from _rows_from_table(list(r) for r in book.active.iter_rows(values_only=True))
        finally:
            book.close()
    elif kind in ("jsonl", "ndjson"):
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
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
                mapped = {_LOOKUP.get(_header_key(k)): _cell(v) for k, v in item.items()}
                mapped.pop(None, None)
                yield mapped
    else:
        raise UnreadableFile(f"unsupported file type {kind!r}: use csv, xlsx or jsonl")
