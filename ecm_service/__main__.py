from pathlib import Path

from ecm_service.adapters import tables
from ecm_service.config import EcmSettings
from ecm_service.entrypoints.demo_data import seed_demo_data
from infra.service_cli import run_cli

run_cli(
    service="ecm",
    settings_cls=EcmSettings,
    users_table=tables.users,
    migrations_dir=Path(__file__).parent / "migrations",
    app_factory="ecm_service.entrypoints.app:create_app",
    seed_data=seed_demo_data,
)
