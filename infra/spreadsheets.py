"""Reading tabular files row by row, for imports on both sides: CSV (UTF-8 or Windows-1251,
told line by line, or UTF-16 with its BOM; comma, semicolon or tab) and XLSX (openpyxl in
read-only mode).
Files are never loaded whole; cells come back cleaned (numbers that are ids as text,
formulas and NUL characters dropped). And the other way: text written into the CSV and
XLSX exports stays text when a spreadsheet opens them."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path

MAX_CELL = 1000


class UnreadableFile(Exception):
    pass


class UndecodableRow(list):
    """A CSV row with a line that is neither UTF-8 nor Windows-1251 text (that line's
    cells hold its bytes as Latin-1); `reason` is the row's error for the import's report.
    The rows around it are read as usual."""

    def __init__(self, cells, reason: str):
        super().__init__(cells)
        self.reason = reason


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


PROBE_BYTES = 65536  # what a CSV is told from: a UTF-16 byte order mark, NUL bytes (not text)
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


LINE_ENCODINGS = ("utf-8", "cp1251")


def _decoded_lines(lines: Iterator[str], unreadable: list[int]) -> Iterator[str]:
    """The file's lines (read as Latin-1: one character per byte), each in the first of
    UTF-8 and Windows-1251 it reads in; the numbers of lines in neither go onto
    `unreadable` (and the line, as Latin-1, on)."""
    for number, line in enumerate(lines, start=1):
        raw = line.encode("latin-1")
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        for encoding in LINE_ENCODINGS:
            try:
                yield raw.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            unreadable.append(number)
            yield line


def _csv_rows(path: Path) -> Iterator[list]:
    """Each line in the encoding it is written in: UTF-8 if it reads as UTF-8, else
    Windows-1251. Files put together from two programs' exports (1C writes Windows-1251, a
    web form UTF-8) mix them, and a file's first lines (the old guess from its first 64 KiB)
    say nothing of the rest. Real Windows-1251 text with Cyrillic in it is never valid
    UTF-8 (its letters are bytes UTF-8 can only follow with 0x80-0xBF), so the order
    decides nothing for such lines. Lines end where the universal newlines say (CR, LF or
    both: bytes neither encoding uses inside a character); a quoted cell may go on over
    several lines, each read on its own. UTF-16 (its byte order mark) is read as one text."""
    with open(path, "rb") as probe:
        head = probe.read(PROBE_BYTES)
    utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))  # Excel's "Unicode text"
    if not utf16 and b"\x00" in head:
        raise UnreadableFile("the CSV is not text (it holds NUL bytes): neither UTF-8 nor Windows-1251 "
                             "(nor UTF-16 with a byte order mark)")
    with open(path, encoding="utf-16" if utf16 else "latin-1", newline="") as text:
        sample = text.read(4096)
        text.seek(0)
        delimiter = max(DELIMITERS, key=sample.count)  # the first of equals: a one-column file
        if utf16:
            yield from csv.reader(text, delimiter=delimiter)
            return
        unreadable: list[int] = []
        reader = csv.reader(_decoded_lines(text, unreadable), delimiter=delimiter)
        last_line = 0
        for number, row in enumerate(reader, start=1):
            first_line, last_line = last_line + 1, reader.line_num
            # The reader reads no line past its row's, so the row holds an unreadable line
            # exactly when the latest one is among its own.
            if not unreadable or unreadable[-1] < first_line:
                yield row
            elif number == 1:
                raise UnreadableFile("the CSV's header is neither UTF-8 nor Windows-1251 text")
            else:
                yield UndecodableRow(row, "this row is neither UTF-8 nor Windows-1251 text")


def read_table(path: Path, kind: str | None = None) -> Iterator[list]:
    """Yields every row as a list of raw cells, the header first."""
    kind = kind or path.suffix.lower().lstrip(".")
    if kind == "csv":
        try:
            yield from _csv_rows(path)
        except (csv.Error, UnicodeDecodeError) as exc:  # a UTF-16 file broken off inside a character
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
