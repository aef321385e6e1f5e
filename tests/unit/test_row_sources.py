import json

import pytest
from openpyxl import Workbook

from ecm_service.adapters.row_sources import UnreadableFile, read_rows


def test_csv_in_windows_1251_with_semicolons_and_russian_headers(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes("Код;Наименование;ИНН;КПП\n000123;ООО «Ёлка»;7707083893;773601001\n".encode("cp1251"))
    assert list(read_rows(path)) == [
        {"code": "000123", "name": "ООО «Ёлка»", "inn": "7707083893", "kpp": "773601001"}]


def test_csv_utf8_with_bom_and_english_headers(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("\ufeffcode,Company,Tax ID,country\nA1,Vector GmbH,,de\n", encoding="utf-8")
    assert list(read_rows(path)) == [{"code": "A1", "name": "Vector GmbH", "inn": None, "country": "de"}]


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
