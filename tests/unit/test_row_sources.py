import json

import pytest
from openpyxl import Workbook

from ecm_service.adapters.row_sources import UnreadableFile, read_rows


def test_csv_in_windows_1251_with_semicolons_and_russian_headers(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes("Код;Наименование;ИНН;КПП\n000123;ООО «Ёлка»;7707083893;773601001\n".encode("cp1251"))
    assert list(read_rows(path)) == [
        {"code": "000123", "name": "ООО «Ёлка»", "inn": "7707083893", "kpp": "773601001"}]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_excels_unicode_text_export_utf16_with_tabs(tmp_path, encoding):
    # "Unicode text" (Юникод-текст) is how Excel saves a sheet with every alphabet intact:
    # UTF-16 with a byte order mark, tab-separated. It used to read as Windows-1251 garbage.
    text = "Код\tНаименование\tИНН\r\n000123\tООО «Ёлка», филиал\t7707083893\r\n"
    data = text.encode(encoding) if encoding == "utf-16" else "\ufeff".encode("utf-16-be") + text.encode(encoding)
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    assert list(read_rows(path)) == [{"code": "000123", "name": "ООО «Ёлка», филиал", "inn": "7707083893"}]


def test_csv_utf8_with_bom_and_english_headers(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("\ufeffcode,Company,Tax ID,country\nA1,Vector GmbH,,de\n", encoding="utf-8")
    assert list(read_rows(path)) == [{"code": "A1", "name": "Vector GmbH", "inn": None, "country": "de"}]


@pytest.mark.parametrize("name", ["ООО «Ромашка»", "ИП Иванов"])
def test_a_large_utf8_csv_whose_probe_ends_inside_a_character_reads_as_utf8(tmp_path, name):
    # The encoding is guessed from the file's first 64 KiB. Cut inside a two-byte Cyrillic
    # letter, that head is not valid UTF-8: a file without "И" (whose second byte 0x98 is
    # not Windows-1251) was then read as Windows-1251, every name garbled; one with it was
    # refused as neither.
    def utf8_file(padding: int) -> bytes:  # the first code padded with zeros moves the cut
        rows = [f"{'0' * padding if i == 0 else ''}{i};{name}\n" for i in range(20_000)]
        return ("Код;Наименование\n" + "".join(rows)).encode()

    data = next(d for d in map(utf8_file, range(4)) if d[65_536] & 0xC0 == 0x80)  # a continuation byte
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    read = list(read_rows(path))
    assert len(read) == 20_000 and {row["name"] for row in read} == {name}


def test_xlsx_numbers_formulas_and_short_rows(tmp_path):
    book = Workbook()
    sheet = book.active
    sheet.append(["Код", "Наименование", "ИНН", "ОГРН"])
    sheet.append([17, "Ромашка", 7707083893, "=1+1"])
    sheet.append([18, "Лютик"])
    path = tmp_path / "export.xlsx"
    book.save(path)
    assert list(read_rows(path)) == [
        {"code": "17", "name": "Ромашка", "inn": "7707083893", "ogrn": None},
        {"code": "18", "name": "Лютик", "inn": None, "ogrn": None}]


def test_jsonl_keeps_going_past_bad_lines(tmp_path):
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join([json.dumps({"code": "1", "name": "A", "ИНН": "7707083893"}), "{oops", "[1]", ""]))
    rows = list(read_rows(path))
    assert rows[0] == {"code": "1", "name": "A", "inn": "7707083893"}
    assert rows[1] == {"_error": "line 2 is not JSON"} and rows[2] == {"_error": "line 3 is not a JSON object"}


def test_jsonl_line_in_another_encoding_is_that_rows_error(tmp_path):
    # An export with a byte order mark whose second line came out in Windows-1251: the rows around it still load.
    lines = [json.dumps({"code": str(n), "name": name}, ensure_ascii=False)
             for n, name in enumerate(("Ромашка", "Лютик", "Василёк"), start=1)]
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"\n".join([lines[0].encode("utf-8-sig"), lines[1].encode("cp1251"), lines[2].encode()]))
    assert list(read_rows(path)) == [
        {"code": "1", "name": "Ромашка"},
        {"_error": "line 2 is not UTF-8 text (JSON lines are UTF-8)"},
        {"code": "3", "name": "Василёк"}]


def _mixed_csv(tmp_path, rows: int = 3000, other: int = 2990, encodings=("utf-8", "cp1251"), tail: bytes = b""):
    """An export in one encoding, longer than the 64 KiB the encoding used to be guessed
    from, with one row pasted in from a file in the other past that point."""
    first, second = encodings
    lines = [f"{n};ООО «Ромашка {n}»;Ёлочная улица, дом {n}" for n in range(1, rows + 1)]
    data = [("\ufeff" if first == "utf-8" else "").encode(first) + "Код;Наименование;Адрес".encode(first)]
    data += [line.encode(second if n == other else first) for n, line in enumerate(lines, start=1)]
    assert len(b"\n".join(data[:other])) > 65_536
    path = tmp_path / "export.csv"
    path.write_bytes(b"\n".join(data) + b"\n" + tail)
    return path


@pytest.mark.parametrize("encodings", [("utf-8", "cp1251"), ("cp1251", "utf-8")])
def test_csv_rows_are_read_each_in_its_own_encoding(tmp_path, encodings):
    # A file put together from two programs' exports. The encoding used to be guessed from
    # the first 64 KiB: a Windows-1251 row further on failed the whole load there, and a
    # UTF-8 row in a Windows-1251 file came in garbled ("ООО Â«Ð Ð¾Ð¼Ð°ÑˆÐºÐ°Â»").
    rows = list(read_rows(_mixed_csv(tmp_path, encodings=encodings)))
    assert rows == [{"code": str(n), "name": f"ООО «Ромашка {n}»", "address": f"Ёлочная улица, дом {n}"}
                    for n in range(1, 3001)]


def test_csv_row_in_neither_encoding_is_that_rows_error(tmp_path):
    # 0x98 is no Windows-1251 character, and alone no UTF-8 one either.
    rows = list(read_rows(_mixed_csv(tmp_path, rows=2000, other=1990, tail=b"2001;\x98\x98;\n2002;last;\n")))
    assert rows[1989]["name"] == "ООО «Ромашка 1990»"
    assert rows[2000] == {"_error": "this row is neither UTF-8 nor Windows-1251 text"}
    assert rows[2001] == {"code": "2002", "name": "last", "address": None}
    assert len(rows) == 2002


def test_csv_mapped_rows_give_an_unreadable_rows_reason_for_its_cells(tmp_path):
    from infra.spreadsheets import mapped_rows

    read = list(mapped_rows(_mixed_csv(tmp_path, rows=2000, other=1990, tail=b"2001;\x98;\n"), [1, 0]))
    assert [number for number, _, _ in read] == list(range(2, 2003))
    assert read[-1] == (2002, "this row is neither UTF-8 nor Windows-1251 text", True)
    assert read[1988] == (1990, ["ООО «Ромашка 1989»", "1989"], True)
    assert read[1989] == (1991, ["ООО «Ромашка 1990»", "1990"], True)


def test_csv_whose_header_cannot_be_read_or_which_is_not_text_is_refused(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes("Наименование;".encode() + b"\x98\n1;2\n")
    with pytest.raises(UnreadableFile, match="the CSV's header is neither UTF-8 nor Windows-1251 text"):
        list(read_rows(path))
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # a picture saved as .csv
    with pytest.raises(UnreadableFile, match="not text"):
        list(read_rows(path))


def test_csv_lines_end_as_any_program_ends_them_and_cells_may_span_lines(tmp_path):
    # Excel for Mac's "CSV (Macintosh)" ends lines with CR alone; a quoted address may
    # hold line breaks, and a row's lines are each read in their own encoding.
    path = tmp_path / "export.csv"
    path.write_bytes(b"\r".join(["Код;Наименование;Адрес".encode("cp1251"), "1;Ёлка;Тверь".encode("cp1251"),
                                 '2;Лютик;"Москва,'.encode() + b"\r\n" + 'ул. Ленина"'.encode("cp1251"),
                                 b'3;x;"\x98', b'y"', "4;Роза;".encode(), b""]))
    assert list(read_rows(path)) == [
        {"code": "1", "name": "Ёлка", "address": "Тверь"},
        {"code": "2", "name": "Лютик", "address": "Москва,\r\nул. Ленина"},
        {"_error": "this row is neither UTF-8 nor Windows-1251 text"},
        {"code": "4", "name": "Роза", "address": None}]


def test_csv_with_a_byte_order_mark_and_a_quoted_header(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes('\ufeff"Код","Наименование"\n"1","ООО ""Ёлка"", филиал"\n'.encode())
    assert list(read_rows(path)) == [{"code": "1", "name": 'ООО "Ёлка", филиал'}]


@pytest.mark.parametrize("content, kind, message", [
    ("", "csv", "empty"),
    ("code,inn\n1,7707083893\n", "csv", "no name column"),
    ("whatever", "txt", "unsupported"),
    ("not a zip", "xlsx", "not a readable XLSX"),
])
def test_unreadable_files_say_why(tmp_path, content, kind, message):
    path = tmp_path / f"export.{kind}"
    path.write_text(content)
    with pytest.raises(UnreadableFile, match=message):
        list(read_rows(path))


def test_exported_text_that_starts_like_a_formula_stays_text():
    # OWASP's CSV injection: a name a rep typed, an approver's comment, a file's code.
    import csv
    import io

    from openpyxl import load_workbook

    from ecm_service.service_layer.reconciliation import report_csv, report_xlsx
    from infra.spreadsheets import inert, inert_record

    assert [inert(v) for v in ("=1+1", "+7 900 000-00-00", "-x", "@SUM(A1)", "\tx", "\rx")] == [
        "'=1+1", "'+7 900 000-00-00", "'-x", "'@SUM(A1)", "'\tx", "'\rx"]
    assert [inert(v) for v in ("ООО «Ромашка»", "", None, -5, 0.5, "a=b")] == ["ООО «Ромашка»", "", None, -5, 0.5,
                                                                          "a=b"]
    assert inert_record({"text": "=cmd|' /C calc'!A0", "count": 3}) == {"text": "'=cmd|' /C calc'!A0", "count": 3}
    row = {"external_id": "org-1", "state": "proposed", "counterparty_id": None, "score": -1.5, "evidence": {},
           "snapshot": {"name": '=HYPERLINK("http://evil.example","open")', "inn": "7707083893"}, "run_id": "r"}
    (line,) = list(csv.reader(io.StringIO(report_csv([row]).decode())))[1:]
    assert line[5] == "'" + row["snapshot"]["name"] and line[3] == "-1.5"
    sheet = load_workbook(io.BytesIO(report_xlsx([row]))).active
    name = sheet.cell(row=2, column=6)
    assert (name.value, name.data_type) == (row["snapshot"]["name"], "s")  # a text cell, not a formula
    assert sheet.cell(row=2, column=4).value == -1.5


def test_an_xlsx_whose_sheet_breaks_off_says_from_which_row(tmp_path):
    # openpyxl writes U+FFFF into the sheet's XML as it is, and no XML parser reads it back;
    # the reader used to let the parser's own error out instead of saying the file is bad.
    from infra.spreadsheets import read_table

    book = Workbook()
    for row in (["Код", "Наименование"], ["1", "ООО «Ромашка»"], ["2", "Лютик\uffff"]):
        book.active.append(row)
    path = tmp_path / "export.xlsx"
    book.save(path)
    with pytest.raises(UnreadableFile, match=r"the XLSX cannot be read past row \d+: ParseError"):
        list(read_table(path))
    with pytest.raises(UnreadableFile, match="cannot be read past row"):
        list(read_rows(path))
