"""Body of every service's Alembic env.py (async engines, SQLite batch mode, one
migration at a time on PostgreSQL)."""

import asyncio
import logging
import time

from alembic import context
from sqlalchemy import MetaData, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from infra.search_index import include_object


def run_migrations(target_metadata: MetaData) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return

    def _run(connection):
        context.configure(
            connection=connection, target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            include_object=include_object(connection.dialect.name),
        )
        with _one_at_a_time(connection):
            with context.begin_transaction():
                context.run_migrations()

    async def _main():
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
        await engine.dispose()

    existing = context.config.attributes.get("connection")
    if existing is not None:
        _run(existing)
    else:
        asyncio.run(_main())


MIGRATION_LOCK = 7_301_552_032  # any constant; names the advisory lock migrations take


class _one_at_a_time:
    """Replicas of a service migrate as they start (Kubernetes init containers, compose's
    `migrate && serve`), at the same moment on a fresh rollout; at once, all but one
    failed on tables and indexes the other had just created. On PostgreSQL a session
    advisory lock lets one run while the others wait, then find the database at head
    and do nothing. Committed right after it is taken, so that Alembic still begins its
    own transactions (and can leave them for the CONCURRENTLY index builds). A waiter
    tries the lock in short transactions instead of blocking in one: a CONCURRENTLY
    build waits for every older transaction, so a waiter blocked in pg_advisory_lock
    while the lock holder builds such an index is a deadlock. SQLite serialises writers
    itself and is one process's file anyway."""

    def __init__(self, connection):
        self._connection = connection
        self._locking = connection.dialect.name == "postgresql"

    def __enter__(self):
        if not self._locking:
            return
        told = False
        while True:
            taken = self._connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                             {"key": MIGRATION_LOCK}).scalar()
            self._connection.commit()
            if taken:
                return
            if not told:
                logging.getLogger("alembic.runtime.migration").info("Another process is migrating; waiting")
                told = True
            time.sleep(0.5)

    def __exit__(self, exc_type, exc, tb):
        if not self._locking:
            return False
        try:
            self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            self._connection.commit()
        except Exception:
            if exc_type is None:
                raise
            # After a failed migration the error to report is the migration's; the lock goes
            # with the connection, which is closed next.
        return False
