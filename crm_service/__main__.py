import sys
from pathlib import Path

from crm_service.adapters import tables
from crm_service.adapters.repositories import content_holders
from crm_service.config import CrmSettings
from crm_service.entrypoints.demo_data import seed_demo_data
from infra.content_check import verify_content_command
from infra.service_cli import run_cli

sys.exit(run_cli(
    service="crm",
    settings_cls=CrmSettings,
    users_table=tables.users,
    migrations_dir=Path(__file__).parent / "migrations",
    app_factory="crm_service.entrypoints.app:create_app",
    seed_data=seed_demo_data,
    extra_commands={"verify-content": verify_content_command(content_holders(), "files_dir")},
))
