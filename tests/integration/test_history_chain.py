"""The history is append-only and tamper-evident on both backends: altering or
removing one entry is detected and named."""

from sqlalchemy import delete, update

from ecm_service.adapters.history import verify_chain
from ecm_service.adapters.tables import history


async def _append(ecm, n):
    async with ecm.uow() as uow:
        for i in range(n):
            await uow.history.append(entity_type="counterparty", entity_id=f"c{i % 3}", action="edited",
                                     actor="user:u", reason=f"fix {i}", data={"changes": {"name": ["a", f"б{i}"]}})
        await uow.commit()


async def test_an_intact_chain_verifies(ecm):
    await _append(ecm, 30)
    async with ecm.session_factory() as session:
        report = await verify_chain(session, chunk=7)
    assert report.intact and report.entries == 30


async def test_an_altered_entry_is_named(ecm):
    await _append(ecm, 10)
    async with ecm.session_factory() as session, session.begin():
        await session.execute(update(history).where(history.c.seq == 6).values(reason="nothing happened"))
    async with ecm.session_factory() as session:
        report = await verify_chain(session)
    assert (report.first_broken_seq, report.problem) == (6, "entry content does not match its hash")


async def test_a_removed_entry_is_named(ecm):
    await _append(ecm, 10)
    async with ecm.session_factory() as session, session.begin():
        await session.execute(delete(history).where(history.c.seq == 4))
    async with ecm.session_factory() as session:
        report = await verify_chain(session)
    assert (report.first_broken_seq, report.problem) == (5, "previous entry missing or altered")


async def test_appends_continue_the_chain_after_a_commit_and_another_writer(ecm):
    """The chain's tail is read once per transaction: after a commit (and another
    writer's entries) the next append reads it again instead of forking the chain."""
    async with ecm.uow() as uow:
        for i in range(3):  # one transaction: the tail is locked and read once
            await uow.history.append(entity_type="counterparty", entity_id="c", action="edited", actor="user:u",
                                     data={"i": i})
        await uow.commit()
        await _append(ecm, 2)  # another unit of work appends meanwhile
        await uow.history.append(entity_type="counterparty", entity_id="c", action="edited", actor="user:u",
                                 data={"i": "after"})
        await uow.commit()
    async with ecm.session_factory() as session:
        report = await verify_chain(session)
    assert report.intact and report.entries == 6
