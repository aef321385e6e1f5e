"""Bulk load of counterparties: N generated rows (CSV) through the ECM loader into
PostgreSQL, first load and re-run, next to the floor of reading the same file.

    PYTHONPATH=. .venv/bin/python bench/bulk_load.py --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.table import print_table  # noqa: E402
from ecm_service.adapters.row_sources import read_rows  # noqa: E402
from ecm_service.service_layer.bulk_load import BulkLoader  # noqa: E402
from infra.db import make_engine, make_session_factory, upgrade_to_head  # noqa: E402
from tests.support.databases import MIGRATIONS, create_pg_database, drop_pg_database  # noqa: E402


def generate(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("Код;Наименование;ИНН;КПП;ОГРН;Адрес\n")
        for i in range(rows):
            # Synthetic ids: most fail their check digits, which the loader must flag, not refuse.
            out.write(f"{i:08d};ООО «Контрагент {i}»;{7700000000 + i};7701{i % 100:02d}001;"
                      f"{1027700000000 + i};г. Москва, ул. Тверская, {i % 300}\n")


async def load(url: str, path: Path, report: Path) -> tuple[float, dict]:
    engine = make_engine(url)
    try:
        loader = BulkLoader(make_session_factory(engine), system="1c", actor="bench", verify_clean=False)
        started = time.perf_counter()
        result = await loader.run(read_rows(path), report)
        return time.perf_counter() - started, dict(result.counts)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(f"/tmp/bench-bulk-{uuid.uuid4().hex[:6]}")
    work.mkdir()
    path = work / "export.csv"
    generate(path, args.rows)
    started = time.perf_counter()
    read = sum(1 for _ in read_rows(path))
    floor = time.perf_counter() - started
    name, url = create_pg_database("bench_bulk")
    try:
        upgrade_to_head(MIGRATIONS["ecm"], url)
        first, counts = asyncio.run(load(url, path, work / "first.csv"))
        rerun, recounts = asyncio.run(load(url, path, work / "rerun.csv"))
    finally:
        drop_pg_database(name)
    rows = [
        ("cores", os.cpu_count(), ""),
        ("rows", read, f"{path.stat().st_size / 1e6:.0f} MB CSV"),
        ("floor: read and map the file only", f"{floor:.1f} s", f"{read / floor:,.0f} rows/s"),
        ("first load (PostgreSQL)", f"{first:.1f} s", f"{read / first:,.0f} rows/s, {first / floor:.1f}x floor"),
        ("  outcomes", "", ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))),
        ("re-run of the same file", f"{rerun:.1f} s", f"{read / rerun:,.0f} rows/s"),
        ("  outcomes", "", ", ".join(f"{k} {v}" for k, v in sorted(recounts.items()))),
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
