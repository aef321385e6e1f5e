"""Registry search, the steward's look-alikes and the syncs that write new records, with
and without the trigram index (migration 0015, docs/adr/0023), on PostgreSQL.

    PYTHONPATH=. .venv/bin/python bench/search.py --registry 200000

The registry: `bench/matching.py`'s generated verified counterparties. Then, in rounds
that alternate between the two (the index dropped, then built again):
  syncs        — organizations the registry has not seen, one `ecm.sync_counterparty`
                 each in its own transaction, as a rep's approval request brings them:
                 what the index costs the writes. The index's rounds end by merging
                 GIN's pending list into the index (`gin_clean_pending_list`), work an
                 insert or autovacuum would otherwise do later; it is counted in.
  search       — the registry search (`/api/counterparties?q=`, the registry page) for a
                 brand word of one record, a trade word thousands share, a brand word with
                 the legal form, and an INN (a B-tree lookup either way, for reference).
  look-alikes  — `steward.candidates_for` for each of the pending records the syncs made,
                 as the steward's queue page works it out for up to 100 records.
Reported per query or sync: the wall time (p50, p95) and the CPU of PostgreSQL's processes
(all of them: the server is the machine's own, otherwise idle) and of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from bench.matching import WORDS, company, cpu_reference, generate_registry, load  # noqa: E402
from bench.pipeline import cpu_seconds, postgres_pids  # noqa: E402
from bench.table import print_table, summarise  # noqa: E402
from ecm_service.service_layer import steward  # noqa: E402
from ecm_service.service_layer.registry import sync_counterparty  # noqa: E402
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork  # noqa: E402
from infra.db import make_engine, make_session_factory, upgrade_to_head  # noqa: E402
from schemas import ecm_commands  # noqa: E402
from schemas.common import ExternalRef  # noqa: E402
from schemas.envelope import new_envelope  # noqa: E402
from tests.support.databases import MIGRATIONS, create_pg_database, drop_pg_database  # noqa: E402

INDEX = "ix_counterparties_normalized_name_trgm"
MODES = ("scan", "index")


class Meter:
    """Wall time per call, and the CPU of PostgreSQL and of this process over a phase."""

    def __init__(self):
        self.wall: list[float] = []
        self.pg_cpu = self.own_cpu = 0.0
        self.calls = 0

    async def __aenter__(self):
        self._pg, self._own = _pg_cpu(), time.process_time()
        return self

    async def __aexit__(self, *exc):
        self.pg_cpu += _pg_cpu() - self._pg
        self.own_cpu += time.process_time() - self._own

    async def call(self, make):
        started = time.perf_counter()
        result = await make()
        self.wall.append((time.perf_counter() - started) * 1000)
        self.calls += 1
        return result

    def figures(self) -> dict:
        q = statistics.quantiles(self.wall, n=100) if len(self.wall) > 1 else [self.wall[0]] * 99
        n = max(1, self.calls)
        return {"p50": q[49], "p95": q[94], "pg_ms": self.pg_cpu * 1000 / n, "own_ms": self.own_cpu * 1000 / n}


def _pg_cpu() -> float:
    return sum(cpu_seconds(pid) for pid in postgres_pids())


async def set_index(engine, present: bool) -> None:
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if present:
            await conn.execute(text(f"CREATE INDEX IF NOT EXISTS {INDEX} ON counterparties "
                                    "USING gin (normalized_name gin_trgm_ops)"))
        else:
            await conn.execute(text(f"DROP INDEX IF EXISTS {INDEX}"))
        await conn.execute(text("ANALYZE counterparties"))


async def clean_pending_list(engine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"SELECT gin_clean_pending_list('{INDEX}'::regclass)"))


async def one_sync(sessions, name: str) -> str:
    cmd = ecm_commands.SyncCounterpartyV1(external_ref=ExternalRef(system="crm", id=str(uuid.uuid4())), name=name)
    envelope = new_envelope(type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="bench",
                            correlation_id="bench", payload=cmd)
    async with EcmUnitOfWork(sessions) as uow:
        done = await sync_counterparty(uow, cmd, envelope)
        await uow.commit()
    return done["counterparty_id"]


async def search(sessions, query: str) -> int:
    async with EcmUnitOfWork(sessions) as uow:
        return len(await uow.counterparties.search(text=query, status=None, limit=50))


async def look_alikes(sessions, record_id: str) -> int:
    async with EcmUnitOfWork(sessions) as uow:
        record = await uow.counterparties.get(record_id)
        return len(await steward.candidates_for(uow, record))


def queries(registry: list[dict], n: int, rng: random.Random) -> dict[str, list[str]]:
    picked = rng.sample(registry, n)
    return {
        "brand word": [r["_core"].split()[0].lower() for r in picked],
        "trade word": [rng.choice(WORDS).lower() for _ in range(n)],
        "brand word + legal form": [f"{r['_core'].split()[0].lower()} {r['_form'].lower()}" for r in picked],
        "INN": [r["inn"] for r in picked],
    }


async def run(url: str, args, rng: random.Random) -> tuple[dict, dict]:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    registry = generate_registry(args.registry, rng)
    await load(engine, registry)
    taken = {r["_core"] for r in registry}
    meters = {(phase, mode): Meter() for mode in MODES
              for phase in ("syncs", "look-alikes", *queries(registry, 1, rng))}
    pending: dict[str, list[str]] = {mode: [] for mode in MODES}
    per_round = max(1, args.syncs // args.rounds)
    for round_no in range(args.rounds):
        for mode in MODES if round_no % 2 == 0 else reversed(MODES):
            await set_index(engine, mode == "index")
            names = [f"ООО «{company(rng, taken)}»" for _ in range(per_round)]
            meter = meters[("syncs", mode)]
            async with meter:
                for name in names:
                    pending[mode].append(await meter.call(lambda name=name: one_sync(sessions, name)))
                if mode == "index":
                    await clean_pending_list(engine)
            for kind, texts in queries(registry, args.queries // args.rounds, rng).items():
                async with meters[(kind, mode)] as meter:
                    for query in texts:
                        await meter.call(lambda query=query: search(sessions, query))
            shown = pending[mode][-args.pending // args.rounds:]
            async with meters[("look-alikes", mode)] as meter:
                for record_id in shown:
                    await meter.call(lambda record_id=record_id: look_alikes(sessions, record_id))
    await set_index(engine, True)
    async with engine.connect() as conn:
        outcomes = dict((await conn.execute(text(
            "SELECT outcome, count(*) FROM match_decisions GROUP BY outcome"))).all())
    await engine.dispose()
    return {key: meter.figures() for key, meter in meters.items()}, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=int, default=200_000)
    parser.add_argument("--syncs", type=int, default=2_000, help="new organizations synced in each mode")
    parser.add_argument("--queries", type=int, default=200, help="searches of each kind, in each mode")
    parser.add_argument("--pending", type=int, default=100, help="look-alikes worked out in each mode")
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the two modes")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    reference = cpu_reference()
    name, url = create_pg_database("bench_search")
    started = time.perf_counter()
    try:
        upgrade_to_head(MIGRATIONS["ecm"], url)
        figures, outcomes = asyncio.run(run(url, args, rng))
    finally:
        drop_pg_database(name)
    decided = ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items()))
    rows = [("cores", os.cpu_count(), ""),
            ("machine speed reference", f"{reference:.0f} ms", "a fixed CPU workload (lower is faster)"),
            ("registry (verified counterparties)", f"{args.registry:,}",
             f"{2 * args.syncs:,} syncs of new organizations on top ({decided}); "
             f"{time.perf_counter() - started:.0f} s in all")]
    for phase in ("brand word", "trade word", "brand word + legal form", "INN", "look-alikes", "syncs"):
        scan, index = figures[(phase, "scan")], figures[(phase, "index")]
        rows.append((f"{phase}: p50 with the index", f"{index['p50']:.1f} ms",
                     f"without {scan['p50']:.1f} ms; p95 {index['p95']:.1f} vs {scan['p95']:.1f} ms"))
        rows.append((f"{phase}: PostgreSQL CPU per call", f"{index['pg_ms']:.2f} ms",
                     f"without {scan['pg_ms']:.2f} ms; this process {index['own_ms']:.2f} vs {scan['own_ms']:.2f} ms"))
    print_table(rows)
    at = f"{args.registry:,} registry"
    summarise([
        (f"search: a brand word, p50 ({at})", f"{figures[('brand word', 'index')]['p50']:.1f} ms",
         f"{figures[('brand word', 'scan')]['p50']:.1f} ms without the index", None),
        (f"search: a trade word, p50 ({at})", f"{figures[('trade word', 'index')]['p50']:.1f} ms",
         f"{figures[('trade word', 'scan')]['p50']:.1f} ms without the index", None),
        (f"steward look-alikes per record, p50 ({at})", f"{figures[('look-alikes', 'index')]['p50']:.1f} ms",
         f"{figures[('look-alikes', 'scan')]['p50']:.1f} ms without the index", None),
        (f"sync of a new organization, PostgreSQL CPU ({at})", f"{figures[('syncs', 'index')]['pg_ms']:.2f} ms",
         f"{figures[('syncs', 'scan')]['pg_ms']:.2f} ms without the index", None),
    ])


if __name__ == "__main__":
    main()
