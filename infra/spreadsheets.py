"""Reading tabular files row by row, for imports on both sides: CSV (UTF-8, Windows-1251
or UTF-16 with its BOM; comma, semicolon or tab) and XLSX (openpyxl in read-only mode).
Files are never loaded whole; cells come back cleaned (numbers that are ids as text,
formulas and NUL characters dropped). And the other way: text written into the CSV and
XLSX exports stays text when a spreadsheet opens them."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

MAX_CELL = 1000


class UnreadableFile(Exception):
    pass


class UndecodableRow(list):
    """A CSV row with bytes the file's encoding (guessed from its start) cannot read: a file
    put together from exports of two programs, one in UTF-8 and one in Windows-1251. Its
    cells hold those bytes escaped; `reason` is the row's error for the import's report.
    The rows around it are read as usual."""

    def __init__(self, cells, reason: str):
        super().__init__(cells)
        self.reason = reason


ENCODING_NAMES = {"utf-8-sig": "UTF-8", "cp1251": "Windows-1251", "utf-16": "UTF-16"}
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a byte


def header_key(title) -> str:
    """Comparable form of a column title: lower case, ё -> е, '_' as a space."""
    return " ".join(str(title or "").strip().lower().replace("ё", "е").replace("_", " ").split())


def clean_cell(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # spreadsheets turn ИНН into numbers
    text = str(value).replace("\x00", "").strip()  # a NUL no database text can hold (JSON's \u0000)
    if text.startswith("="):
        return None  # formulas are not data
    return text[:MAX_CELL] or None


PROBE_BYTES = 65536
DELIMITERS = (",", ";", "\t")  # tab: what Excel's "Unicode text" export separates with


# What a spreadsheet takes for the start of a formula when it opens a CSV (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(value):
    """A value for a CSV export that no spreadsheet runs as a formula: text starting like one
    (a name a rep typed as `=HYPERLINK(…)`, a comment, a phone `+7 …`) gets a leading
    apostrophe, which Excel and LibreOffice show as text. Other values pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def inert_row(row) -> list:
    return [inert(value) for value in row]


def inert_record(record: dict) -> dict:
    return {key: inert(value) for key, value in record.items()}


def text_cells(sheet, row) -> list:
    """A row for an openpyxl write-only sheet whose text cells stay text: openpyxl takes any
    string starting with `=` for a formula, and Excel would run it."""
    from openpyxl.cell import WriteOnlyCell

    cells = []
    for value in row:
        cell = WriteOnlyCell(sheet, value=value)
        if isinstance(value, str):
            cell.data_type = "s"
        cells.append(cell)
    return cells


def _csv_text(path: Path) -> io.TextIOWrapper:
    """The file as text in the encoding its first 64 KiB decode in. Incrementally: the
    probe may end inside a multi-byte character, which is no sign of another encoding (a
    UTF-8 file would then have been read as Windows-1251, every Cyrillic name garbled).
    Bytes further on that the encoding cannot read come through escaped (surrogateescape),
    so that only their rows fail (`UndecodableRow`), not the rest of the file."""
    with open(path, "rb") as probe:
        head = probe.read(PROBE_BYTES)
        whole = not probe.read(1)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        # No escapes here: a broken UTF-16 pair can hold bytes below 0x80, which
        # surrogateescape refuses; such a file still fails from that point (below).
        return open(path, encoding="utf-16", newline="", errors="strict")
    for encoding in ("utf-8-sig", "cp1251"):
        try:
            codecs.getincrementaldecoder(encoding)().decode(head, final=whole)
            return open(path, encoding=encoding, newline="", errors="surrogateescape")
        except UnicodeDecodeError:
            continue
    raise UnreadableFile("the CSV is neither UTF-8 nor Windows-1251 (nor UTF-16 with a byte order mark)")


def _csv_rows(handle: io.TextIOWrapper, delimiter: str) -> Iterator[list]:
    encoding = ENCODING_NAMES.get(handle.encoding, handle.encoding)
    for number, row in enumerate(csv.reader(handle, delimiter=delimiter), start=1):
        if _ESCAPED_BYTE.search("".join(row)) is None:
            yield row
        elif number == 1:
            raise UnreadableFile(f"the CSV's header cannot be read as {encoding}")
        else:
            yield UndecodableRow(row, f"this row cannot be read as {encoding}, the encoding of the file's start: "
                                      "the file mixes encodings; save it in one and load it again")


def read_table(path: Path, kind: str | None = None) -> Iterator[list]:
    """Yields every row as a list of raw cells, the header first."""
    kind = kind or path.suffix.lower().lstrip(".")
    if kind == "csv":
        handle = _csv_text(path)
        with handle:
            sample = handle.read(4096)
            handle.seek(0)
            delimiter = max(DELIMITERS, key=sample.count)  # the first of equals: a one-column file
            try:
                yield from _csv_rows(handle, delimiter)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise UnreadableFile(f"the CSV cannot be read past some row: {exc}") from exc
    elif kind == "xlsx":
        from openpyxl import load_workbook

        try:
            book = load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:
            raise UnreadableFile(f"not a readable XLSX file: {exc}") from exc
        read = 0
        try:
            for row in book.active.iter_rows(values_only=True):
                yield list(row)
                read += 1
        except Exception as exc:  # broken sheet XML (a writer let U+FFFF through), a cut file, ...
            raise UnreadableFile(f"the XLSX cannot be read past row {read}: {type(exc).__name__}: {exc}") from exc
        finally:
            book.close()
    else:
        raise UnreadableFile(f"unsupported file type {kind!r}: use csv or xlsx")


def mapped_rows(path: Path, indices: list[int]) -> Iterator[tuple[int, list | str, bool]]:
    """(row number, cleaned cells of the columns at `indices`, filled) for every row after
    the header; for a row that cannot be read (`UndecodableRow`), its reason in place of
    the cells. A row is filled when any of its cells has content, mapped or not (a row
    with content only in formulas or unmapped columns is still a row). Light on imports:
    it runs in a reading process of its own (`infra.process_reader`)."""
    rows = read_table(path)
    next(rows, None)  # the header
    for number, raw in enumerate(rows, start=2):
        if isinstance(raw, UndecodableRow):
            yield number, raw.reason, True
            continue
        cells = [clean_cell(raw[i]) if i < len(raw) else None for i in indices]
        filled = any(c is not None and str(c).strip() != "" for c in raw)
        yield number, cells, filled
