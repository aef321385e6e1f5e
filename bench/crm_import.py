"""CRM spreadsheet import: a generated XLSX of N organizations (10 columns) through the
dry run and the apply on PostgreSQL, next to the floor (openpyxl alone reading the same
file in read-only mode).

    PYTHONPATH=. .venv/bin/python bench/crm_import.py --rows 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openpyxl import Workbook, load_workbook  # noqa: E402

from bench.table import print_table, summarise  # noqa: E402

# The service's modules are imported where they are used: the import spawns its reading
# process, which imports this script again, and in the service it imports nothing more
# than the reading needs.

HEADER = ["Наименование", "ИНН", "КПП", "ОГРН", "Телефон", "E-mail", "Сайт", "Регион", "Категория", "Комментарий"]


def generate(path: Path, rows: int) -> None:
    book = Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append(HEADER)
    for i in range(rows):
        sheet.append([f"ООО «Клиент {i}»", 7700000000 + i, f"7701{i % 100:02d}001", 1027700000000 + i,
                      f"+7 495 {i:07d}", f"client{i}@example.test", f"https://client{i}.example",
                      ("Москва", "Казань", "Тверь")[i % 3], ("A", "B", "C")[i % 3], "импорт из старой CRM"])
    book.save(path)


def floor(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    book = load_workbook(path, read_only=True, data_only=True)
    count = sum(1 for _ in book.active.iter_rows(values_only=True)) - 1
    book.close()
    return time.perf_counter() - started, count


async def run(url: str, path: Path, work: Path, apply: bool, import_id: str) -> tuple[float, dict]:
    """One step of one import (the dry run, then the apply, of the same import id)."""
    from crm_service.adapters import tables
    from crm_service.service_layer.imports import read_header, run_import, suggest_mapping
    from infra.db import make_engine, make_session_factory
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    header = read_header(path)
    if not apply:
        async with sessions() as session, session.begin():
            await session.execute(tables.imports.insert().values(
                id=import_id, file_name=path.name, file_path=str(path), created_by="bench", header=header,
                mapping=suggest_mapping(header), status="uploaded", counts={},
                created_at=datetime.now(timezone.utc)))
    try:
        started = time.perf_counter()
        counts = await run_import(sessions, import_id=import_id, path=path, mapping=suggest_mapping(header),
                                  user_id="bench", apply=apply, report_path=work / f"{import_id}.csv")
        return time.perf_counter() - started, counts
    finally:
        await engine.dispose()


def main() -> None:
    from infra.db import upgrade_to_head
    from infra.runtime import settle_garbage_collector
    from infra.settings import ServiceSettings
    from tests.support.databases import MIGRATIONS, create_pg_database, drop_pg_database

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(f"/tmp/bench-crm-import-{uuid.uuid4().hex[:6]}")
    work.mkdir()
    path = work / "organizations.xlsx"
    generate(path, args.rows)
    # The service's process tunes its garbage collector once started (and its reading
    # process does as it does); so does this one, before the floor is measured too.
    settle_garbage_collector(ServiceSettings().gc_gen0_threshold)
    floor_s, count = floor(path)
    name, url = create_pg_database("bench_crm_import")
    try:
        upgrade_to_head(MIGRATIONS["crm"], url)
        import_id = str(uuid.uuid4())
        dry, dry_counts = asyncio.run(run(url, path, work, apply=False, import_id=import_id))
        applied, counts = asyncio.run(run(url, path, work, apply=True, import_id=import_id))
    finally:
        drop_pg_database(name)
    outcome = lambda c: ", ".join(f"{k} {v}" for k, v in c.items() if v)  # noqa: E731
    print_table([
        ("cores", os.cpu_count(), ""),
        ("rows (10 columns, XLSX)", count, f"{path.stat().st_size / 1e6:.1f} MB"),
        ("floor: openpyxl read-only reads the file", f"{floor_s:.1f} s", f"{count / floor_s:,.0f} rows/s"),
        ("dry run (PostgreSQL)", f"{dry:.1f} s", f"{count / dry:,.0f} rows/s, {dry / floor_s:.1f}x floor"),
        ("  outcomes", "", outcome(dry_counts)),
        ("apply (PostgreSQL)", f"{applied:.1f} s", f"{count / applied:,.0f} rows/s, {applied / floor_s:.1f}x floor"),
        ("  outcomes", "", outcome(counts)),
        ("dry run + apply", f"{dry + applied:.1f} s", "target <= 30 s"),
    ])
    summarise([(f"import of {count:,} XLSX rows: dry run + apply", f"{dry + applied:.1f} s", "<= 30 s",
                dry + applied <= 30),
               ("import: ratio to the openpyxl floor", f"{(dry + applied) / floor_s:.1f}x",
                f"floor {floor_s:.1f} s", None)])


if __name__ == "__main__":
    main()
