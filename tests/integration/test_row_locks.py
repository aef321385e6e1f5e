"""`SELECT … FOR UPDATE` holds the row for the rest of the transaction on both backends
(on SQLite by taking the database's write lock first, infra.db.SqliteSession; ADR 0018):
a second locking read of the row waits for the first transaction's end and then sees
its change, while a plain read does not wait."""

import asyncio

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update

from infra.db import make_engine, make_session_factory

metadata = MetaData()
counters = Table("lock_counters", metadata, Column("id", String(8), primary_key=True), Column("n", Integer))


@pytest.fixture
async def factory(backend, databases):
    url = databases.url("ecm", backend, migrate=False)
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(counters.insert().values(id="a", n=0))
    yield make_session_factory(engine)
    await engine.dispose()
    databases.release(url)


LOCKED = select(counters.c.n).where(counters.c.id == "a").with_for_update()


async def _increment(factory, pause: float = 0.0) -> None:
    async with factory() as session, session.begin():
        n = await session.scalar(LOCKED)
        await asyncio.sleep(pause)  # another transaction's turn, if it were let in
        await session.execute(update(counters).where(counters.c.id == "a").values(n=n + 1))


async def test_a_locking_read_waits_for_the_holder_and_a_plain_read_does_not(factory):
    async with factory() as holder, holder.begin():
        assert await holder.scalar(LOCKED) == 0
        waiting = asyncio.create_task(_increment(factory))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the second locking read waits
        async with factory() as reader:  # a plain read does not
            assert await asyncio.wait_for(reader.scalar(select(counters.c.n)), timeout=5) == 0
        await holder.execute(update(counters).where(counters.c.id == "a").values(n=10))
    await asyncio.wait_for(waiting, timeout=10)
    async with factory() as session:
        assert await session.scalar(select(counters.c.n)) == 11  # it read the holder's 10


async def test_read_modify_writes_at_the_same_moment_lose_no_update(factory):
    await asyncio.gather(*(_increment(factory, pause=0.01) for _ in range(10)))
    async with factory() as session:
        assert await session.scalar(select(counters.c.n)) == 10
