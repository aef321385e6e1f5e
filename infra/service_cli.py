"""The command line every service has: migrate, seed-demo, serve."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn

from infra.db import make_engine, make_session_factory, upgrade_to_head
from infra.users import upsert_user

SeedData = Callable[[object], Awaitable[None]]


def run_cli(
    *, service: str, settings_cls, users_table, migrations_dir: Path, app_factory: str, seed_data: SeedData,
    extra_commands: dict | None = None,
) -> int:
    """extra_commands: name -> (help, add_arguments(parser) or None, async run(settings, args) -> exit code)."""
    parser = argparse.ArgumentParser(prog=f"python -m {service}_service", description=f"The {service.upper()} service.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply Alembic migrations up to head")
    seed = sub.add_parser("seed-demo", help="create demo users and demo data (development only, idempotent)")
    seed.add_argument("--users-file", type=Path, required=True, help="demo-users.json written by the launcher")
    seed.add_argument("--migrate", action="store_true",
                      help="apply the migrations first, in the same process (what `make run` does: one Python "
                           "start per service instead of two)")
    sub.add_parser("serve", help="run the HTTP API, the outbox relay and the command consumer")
    for name, (help_, add_arguments, _) in (extra_commands or {}).items():
        extra = sub.add_parser(name, help=help_)
        if add_arguments:
            add_arguments(extra)
    args = parser.parse_args()
    settings = settings_cls()

    if args.command in (extra_commands or {}):
        return asyncio.run(extra_commands[args.command][2](settings, args))

    if args.command == "migrate":
        upgrade_to_head(migrations_dir, settings.database_url)
    elif args.command == "seed-demo":
        if not settings.is_development:
            parser.error("seed-demo runs only with APP_ENV=development")
        if args.migrate:
            upgrade_to_head(migrations_dir, settings.database_url)
        asyncio.run(_seed(service, settings, users_table, args.users_file, seed_data))
    else:
        if settings.integration_token:
            asyncio.run(_ensure_integration_user(settings, users_table, service))
        # log_config=None: uvicorn's records go to the root logger, which the app factory
        # gives our JSON handler (infra.logs), instead of uvicorn's own plain-text ones.
        uvicorn.run(app_factory, factory=True, host=settings.host, port=settings.port, log_level="warning",
                    log_config=None, timeout_keep_alive=settings.http_keep_alive_seconds,
                    timeout_graceful_shutdown=5)
    return 0


async def _seed(service, settings, users_table, users_file: Path, seed_data: SeedData) -> None:
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        for user in json.loads(users_file.read_text()):
            if user["service"] == service:
                await upsert_user(sessions, users_table, name=user["name"], role=user["role"], token=user["token"])
        await seed_data(sessions)
    finally:
        await engine.dispose()


async def _ensure_integration_user(settings, users_table, service: str) -> None:
    engine = make_engine(settings.database_url)
    try:
        await upsert_user(make_session_factory(engine), users_table, name=f"{service}-integration",
                          role="integration", token=settings.integration_token)
    finally:
        await engine.dispose()
