"""The results table every benchmark prints, and the figures it hands to `bench/all.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path


def print_table(rows: list[tuple[str, object, str]]) -> None:
    width = max(len(label) for label, _, _ in rows)
    print(f"{'measure'.ljust(width)} | {'value':>10} | rate")
    print("-" * (width + 40))
    for label, value, rate in rows:
        print(f"{label.ljust(width)} | {str(value):>10} | {rate}")


def summarise(figures: list[tuple[str, str, str, bool | None]]) -> None:
    """(measure, value, target, met) for the combined table of `bench/all.py`, written to
    the file named by BENCH_SUMMARY when a benchmark runs under it; nothing otherwise."""
    path = os.environ.get("BENCH_SUMMARY")
    if path:
        Path(path).write_text(json.dumps(figures, ensure_ascii=False), encoding="utf-8")
