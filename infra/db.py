"""Async engines for SQLite (embedded default) and PostgreSQL, and Alembic upgrades."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, Table, any_, bindparam, event, insert, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from infra.metrics import DB_ROUND_TRIPS


def make_engine(url: str) -> AsyncEngine:
    """The service's engine. `hide_parameters`: a database error's text names the
    statement but never its values, which hold personal data (names, phones, e-mails);
    uvicorn's traceback of a failing request, and every log line that carries an error,
    print that text."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets readers work while the relay writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        count_round_trips(engine)
        return engine
    # JIT compiles plans whose estimated cost is high (a batch lookup of thousands of
    # keys): 25 ms of compiling for a query that runs in a few. Short OLTP queries only here.
    # No pool_pre_ping: with asyncpg it costs three round trips (BEGIN, ping, ROLLBACK)
    # on every checkout, about a third of all statements on the hot path. A connection
    # found dead instead fails its one operation and invalidates the pool; the consumers
    # and relays retry, and the next checkout connects afresh.
    engine = create_async_engine(url, pool_size=10, max_overflow=10, hide_parameters=True,
                                 connect_args={"server_settings": {"jit": "off"}})
    count_round_trips(engine)
    event.listen(engine.sync_engine, "checkout", _closed_by_the_server)
    return engine


def _closed_by_the_server(dbapi_connection, _record, _proxy) -> None:
    """A pooled connection that the server has closed is not handed out. A restart,
    a failover or `pg_terminate_backend` ends every connection with a message that
    asyncpg reads as it comes, so the pool can tell without a round trip (unlike
    pool_pre_ping, above); the pool then connects afresh (up to three tries). Before,
    the first call on each such connection failed: an API call answered 500."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the database server closed this connection")


def count_round_trips(engine: AsyncEngine) -> None:
    """db_round_trips_total: each statement, BEGIN, COMMIT and ROLLBACK is one wait for
    the database (asyncpg sends BEGIN on its own). Under load each wait takes tens of
    milliseconds to come back, and the count does not move with the machine's speed, so
    the pipeline benchmark reports it per request."""
    count = DB_ROUND_TRIPS.inc
    for name in ("before_cursor_execute", "begin", "commit", "rollback"):
        event.listen(engine.sync_engine, name, lambda *args, **kwargs: count())


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker:
    if is_sqlite(engine):
        return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=SqliteSession)
    return async_sessionmaker(engine, expire_on_commit=False)


class SqliteSession(Session):
    """A session on SQLite, where `SELECT … FOR UPDATE` locks what it reads as it does on
    PostgreSQL. SQLite has no row locks and drops the clause; Python's sqlite3 module
    (which aiosqlite drives) also reads outside any transaction until the first write. So
    two transactions could both read an approval's stage as pending and both write it back:
    a double click recorded two decisions, and two approvers of one stage deciding at once
    wrote over each other's decision, leaving the stage waiting for ever. Here such a read
    first takes the database's write lock (`BEGIN IMMEDIATE`; another writer waits for it,
    up to the busy timeout) unless the transaction already holds it (in the sqlite3
    module, a transaction is open only once a write has begun it, and a write takes the
    lock). The transactions that lock rows then run one after the other, as on PostgreSQL
    those that lock the same rows do."""


@event.listens_for(SqliteSession, "do_orm_execute")
def _lock_before_reading_for_update(state: ORMExecuteState) -> None:
    if getattr(state.statement, "_for_update_arg", None) is None:  # (no public accessor)
        return
    connection = state.session.connection()
    if not connection.connection.driver_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


async def analyze(session: AsyncSession, *table_names: str) -> None:
    """Fresh planner statistics for tables a long job is growing, in the session's
    transaction (PostgreSQL; nothing on SQLite). Such a job writes faster than autovacuum
    looks; with an empty table's statistics PostgreSQL scans instead of using the
    indexes and every batch is slower than the one before."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("ANALYZE " + ", ".join(table_names)))


def one_of(column, values, dialect) -> ColumnElement[bool]:
    """`column IN (values)` for a batch lookup. On PostgreSQL `column = ANY(array)`: one
    parameter instead of one per value (a lookup of 1,000 keys costs 0.8 ms instead of
    5.8, most of that in compiling and binding a thousand placeholders)."""
    values = list(values)
    if dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


async def insert_rows(session: AsyncSession, table: Table, rows: list[dict]) -> None:
    """Many rows into `table` in the session's transaction. On PostgreSQL through COPY
    (asyncpg's binary copy): an executemany INSERT costs the server a statement per row,
    the larger part of a 100,000-row import's apply. Elsewhere an executemany INSERT.
    Every row names the same columns; columns left out take their server default (COPY
    knows nothing of Python-side defaults, so a column that has one must be given)."""
    if not rows:
        return
    dialect = session.bind.dialect
    if dialect.name != "postgresql" or dialect.driver != "asyncpg":
        await session.execute(insert(table), rows)
        return
    columns = list(rows[0])
    missing = [c.name for c in table.columns if c.name not in columns and c.default is not None]
    if missing:
        raise ValueError(f"insert_rows into {table.name}: give {', '.join(missing)} (Python-side defaults)")
    # Most columns go as they are; only the few that need it are converted, row by row.
    convert = [(i, f) for i, name in enumerate(columns) if (f := _copy_value(table.c[name].type, dialect))]
    record_of = itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    if convert:
        records = [list(record_of(row)) for row in rows]
        for record in records:
            for i, f in convert:
                record[i] = f(record[i])
    else:
        records = [record_of(row) for row in rows]
    raw = await (await session.connection()).get_raw_connection()
    DB_ROUND_TRIPS.inc()
    driver = raw.driver_connection
    if not driver.is_in_transaction():  # asyncpg begins on the first statement: make it begin now
        await session.execute(text("SELECT 1"))
    await driver.copy_records_to_table(table.name, records=records, columns=columns, schema_name=table.schema)


def _copy_value(column_type: TypeEngine, dialect) -> Callable | None:
    """What a value becomes on its way into COPY (None: nothing): the type's own binding
    step, JSON as text (asyncpg's json codec takes text)."""
    if isinstance(column_type, TypeDecorator):
        inner = _copy_value(column_type.impl_instance, dialect)
        bind = column_type.process_bind_param
        if inner is None:
            return lambda value: bind(value, dialect)
        return lambda value: inner(bind(value, dialect))
    if isinstance(column_type, JSON):
        return _json_text
    return None


def _json_text(value) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


async def database_reachable(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def upgrade_to_head(migrations_dir: Path, url: str) -> None:
    """Run Alembic for one service. `url` is the async URL the service uses."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


async def migrations_at_head(engine: AsyncEngine, migrations_dir: Path) -> bool:
    """True when the database's Alembic revision is the newest the code knows."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    try:
        async with engine.connect() as conn:
            current = {row[0] for row in await conn.execute(text("SELECT version_num FROM alembic_version"))}
    except Exception:
        return False
    return current == heads
