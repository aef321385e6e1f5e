from ecm_service.adapters.tables import metadata
from infra.alembic_env import run_migrations

run_migrations(metadata)
