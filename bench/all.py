"""Every benchmark, one after the other, each printing its own table; then one table of
the figures the performance issue sets targets for, each next to its target.

    PYTHONPATH=. .venv/bin/python bench/all.py            # make bench: moderate sizes (8-20 min)
    PYTHONPATH=. .venv/bin/python bench/all.py --full     # the issue's sizes (~45 min on 2 cores)

Moderate: 1,000 approval requests and 60 s at 100 req/s, the API floor (bench/api_floor.py:
3,000 calls on the bare stack and on the CRM, two rounds), a 100,000-row import, matching
against 200,000 counterparties with a sync of 10,000, registry search with and without
its trigram index on as many (bench/search.py), pruning 200,000 outbox rows and as many
inbox marks. Full: 10,000 requests, matching and search against 1,000,000 with the
100,000 sync the target is stated for, pruning 1,000,000 of each. Sizes can be set one
by one (--requests, --rows, --registry, --sync, ...); --only runs some of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("pipeline", "floor", "import", "matching", "search", "pruning")
FAILED = "FAILED"


def run(name: str, script: str, args: list[str]) -> list:
    """Runs one benchmark (its table goes straight to the terminal); its figures."""
    print(f"\n== {name}: {script} {' '.join(args)}", flush=True)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        summary = Path(handle.name)
    env = {**os.environ, "BENCH_SUMMARY": str(summary), "PYTHONPATH": str(HERE.parent)}
    started = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, str(HERE / script), *args], env=env, check=False)
        figures = json.loads(summary.read_text(encoding="utf-8") or "[]") if result.returncode == 0 else []
    finally:
        summary.unlink(missing_ok=True)
    if result.returncode != 0:
        return [(f"{name} (exit code {result.returncode})", FAILED, "", False)]
    print(f"({name} took {time.perf_counter() - started:.0f} s)", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the sizes the issue states its targets for")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"some of {', '.join(BENCHES)}")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--registry", type=int)
    parser.add_argument("--sync", type=int)
    parser.add_argument("--prune-rows", type=int)
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmarks {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    requests = args.requests or (10_000 if args.full else 1_000)
    registry = args.registry or (1_000_000 if args.full else 200_000)
    sync = args.sync or (100_000 if args.full else 10_000)
    prune_rows = args.prune_rows or (1_000_000 if args.full else 200_000)

    figures: list = [("cores", str(os.cpu_count()), "", None)]
    if "pipeline" in only:
        figures += run("pipeline", "pipeline.py", ["--requests", str(requests), "--backend", args.backend,
                                                   "--rate", f"{args.rate:g}", "--seconds", f"{args.seconds:g}"])
    if "floor" in only:
        figures += run("floor", "api_floor.py", ["--requests", "3000", "--rounds", "2"])
    if "import" in only:
        figures += run("import", "crm_import.py", ["--rows", str(args.rows)])
    if "matching" in only:
        figures += run("matching", "matching.py", ["--registry", str(registry), "--sync", str(sync)])
    if "search" in only:
        figures += run("search", "search.py", ["--registry", str(registry)])
    if "pruning" in only:
        figures += run("pruning", "pruning.py", ["--rows", str(prune_rows), "--kept", str(prune_rows // 10)])

    print("\n== the figures the performance issue sets targets for")
    width = max(len(measure) for measure, *_ in figures)
    print(f"{'measure'.ljust(width)} | {'value':>22} | {'target':<34} | met")
    print("-" * (width + 70))
    for measure, value, target, met in figures:
        verdict = "" if met is None else ("yes" if met else "NO")
        print(f"{measure.ljust(width)} | {value:>22} | {target:<34} | {verdict}")
    return 1 if any(value == FAILED for _, value, *_ in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
