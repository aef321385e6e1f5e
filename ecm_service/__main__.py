import sys
from pathlib import Path

from ecm_service.adapters import tables
from ecm_service.adapters.history import verify_chain
from ecm_service.config import EcmSettings
from ecm_service.entrypoints.demo_data import seed_demo_data
from infra.db import make_engine, make_session_factory
from infra.service_cli import run_cli


async def verify_history(settings: EcmSettings) -> int:
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


sys.exit(run_cli(
    service="ecm",
    settings_cls=EcmSettings,
    users_table=tables.users,
    migrations_dir=Path(__file__).parent / "migrations",
    app_factory="ecm_service.entrypoints.app:create_app",
    seed_data=seed_demo_data,
    extra_commands={"verify-history": ("check the hash chain of the history; exit 1 naming the first broken entry",
                                       verify_history)},
))
