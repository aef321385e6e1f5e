import asyncio
import signal
import sys
import uuid
from pathlib import Path

from ecm_service.adapters import tables
from ecm_service.adapters.history import verify_chain
from ecm_service.adapters.repositories import content_holders
from ecm_service.config import EcmSettings
from ecm_service.entrypoints.demo_data import seed_demo_data
from ecm_service.service_layer.bulk_load import run_job, start_job
from infra.content_check import verify_content_command
from infra.db import make_engine, make_session_factory
from infra.service_cli import run_cli


async def verify_history(settings: EcmSettings, _args) -> int:
    """Checks the whole history chain; names the first broken entry."""
    engine = make_engine(settings.database_url)
    try:
        async with make_session_factory(engine)() as session:
            report = await verify_chain(session)
    finally:
        await engine.dispose()
    if report.intact:
        print(f"history chain intact: {report.entries} entries")
        return 0
    print(f"history chain BROKEN at entry seq={report.first_broken_seq}: {report.problem}")
    return 1


def bulk_load_arguments(parser) -> None:
    parser.add_argument("file", type=Path, help="CSV, XLSX or JSONL export of the accounting system")
    parser.add_argument("--system", default="1c", help="the source system's name, kept in the external refs")
    parser.add_argument("--verify-clean-rows", action="store_true",
                        help="rows whose identifiers are complete and valid become verified")
    parser.add_argument("--report", type=Path, help="where to write the row-level CSV report")


async def bulk_load(settings: EcmSettings, args) -> int:
    """Ctrl-C or SIGTERM ends the load after the chunk in hand, recorded as interrupted
    (exit 130), instead of leaving it `running` until the stale rule notices."""
    kind = args.file.suffix.lower().lstrip(".")
    report = args.report or settings.imports_dir / f"{args.file.stem}-{uuid.uuid4().hex[:8]}.report.csv"
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    stop, loop = asyncio.Event(), asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        load_id = await start_job(sessions, file_name=args.file.name, system=args.system, user_id="cli")
        result = await run_job(sessions, load_id=load_id, path=args.file, kind=kind, system=args.system,
                               actor="cli:bulk-load", verify_clean=args.verify_clean_rows, report_path=report,
                               stop=stop, stopped_by="the bulk-load command")
    finally:
        await engine.dispose()
    if result is None:
        print(f"bulk load {load_id} failed; see GET /api/counterparties/bulk-loads/{load_id}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    if result.stopped:
        print(f"bulk load {load_id} interrupted after {result.rows} rows ({counts}); report: {report}; load the "
              "file again to go on (rows already loaded are found by their code)", file=sys.stderr)
        return 130
    print(f"bulk load {load_id}: {result.rows} rows ({counts}); report: {report}")
    return 0


sys.exit(run_cli(
    service="ecm",
    settings_cls=EcmSettings,
    users_table=tables.users,
    migrations_dir=Path(__file__).parent / "migrations",
    app_factory="ecm_service.entrypoints.app:create_app",
    seed_data=seed_demo_data,
    extra_commands={
        "verify-history": ("check the hash chain of the history; exit 1 naming the first broken entry", None,
                           verify_history),
        "bulk-load": ("load counterparties from an accounting export (re-runs update, never duplicate)",
                      bulk_load_arguments, bulk_load),
        "verify-content": verify_content_command(content_holders(), "content_dir"),
    },
))
