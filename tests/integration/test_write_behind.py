"""The unit of work's write-behind inserts (infra.unit_of_work.WriteBehindSession): rows
wait until the next statement, then go out parents first; reads see them; a rollback
drops them; a broken constraint fails the statement that flushes them."""

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, bindparam, func, select
from sqlalchemy.exc import IntegrityError

from infra.db import make_engine, make_session_factory
from infra.unit_of_work import SqlUnitOfWork

metadata = MetaData()
parents = Table("wb_parents", metadata, Column("id", String(8), primary_key=True))
children = Table("wb_children", metadata, Column("id", Integer, primary_key=True),
                 Column("parent_id", String(8), ForeignKey("wb_parents.id"), nullable=False))


@pytest.fixture
async def factory(backend, databases):
    engine = make_engine(databases.url("ecm", backend, migrate=False))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield make_session_factory(engine)
    await engine.dispose()


async def _count(session, table) -> int:
    return await session.scalar(select(func.count()).select_from(table))


async def test_pending_rows_go_out_parents_first_and_reads_see_them(factory):
    async with SqlUnitOfWork(factory) as uow:
        uow.session.insert_later(children, [{"id": 1, "parent_id": "a"}, {"id": 2, "parent_id": "b"}])
        uow.session.insert_later(parents, [{"id": "a"}, {"id": "b"}])  # the parents come second
        assert await _count(uow.session, children) == 2  # the read flushed them, parents first
        uow.session.insert_later(children, {"id": 3, "parent_id": "a"})
        uow.session.insert_later(children, [])  # nothing
        move = children.update().where(children.c.id == bindparam("child")).values(parent_id=bindparam("to"))
        uow.session.execute_later(move, {"child": 3, "to": "b"})  # a row inserted in this transaction
        uow.session.execute_later(move, {"child": 1, "to": "b"})
        await uow.commit()
    async with factory() as session:
        assert (await _count(session, parents), await _count(session, children)) == (2, 3)
        assert dict((await session.execute(select(children.c.id, children.c.parent_id))).all()) == {
            1: "b", 2: "b", 3: "b"}


async def test_a_rollback_drops_what_waits(factory):
    async with SqlUnitOfWork(factory) as uow:
        uow.session.insert_later(parents, {"id": "kept"})
        await uow.commit()
    async with SqlUnitOfWork(factory) as uow:
        uow.session.insert_later(parents, {"id": "dropped"})
        await uow.session.rollback()
        assert await _count(uow.session, parents) == 1
    async with SqlUnitOfWork(factory) as uow:  # left without a commit
        uow.session.insert_later(parents, {"id": "dropped"})
    async with factory() as session:
        assert list((await session.execute(select(parents.c.id))).scalars()) == ["kept"]


async def test_a_broken_constraint_fails_the_flush(factory):
    async with SqlUnitOfWork(factory) as uow:
        uow.session.insert_later(parents, [{"id": "x"}, {"id": "x"}])
        with pytest.raises(IntegrityError):
            await uow.commit()
    async with factory() as session:
        assert await _count(session, parents) == 0
