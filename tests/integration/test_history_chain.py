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


async def test_transactions_appending_at_the_same_moment_keep_one_chain(ecm):
    """Rounds of eight units of work that only append, committing at once: each reads the
    chain's tail under the chain's lock, so no two entries name the same predecessor. On
    SQLite the tail used to be read outside any transaction when nothing had been written
    before it, and transactions chained onto the same entry: a fork, reported as
    tampering. (The first round alone seldom showed it: its connections, opened one by
    one, stagger the transactions.)"""
    import asyncio

    for _ in range(3):
        await asyncio.gather(*(_append(ecm, 3) for _ in range(8)))
    async with ecm.session_factory() as session:
        report = await verify_chain(session)
    assert (report.problem, report.entries) == (None, 72)


async def test_a_waiting_entry_holds_no_lock_and_keeps_the_chain_whole(ecm, backend):
    """An append waits for the commit: until then the chain is not locked, so another
    unit of work appends and commits meanwhile (with the lock taken at the first append
    it would wait for this one, which waits for it: the wait_for below would time out).
    Both writers' entries end in one chain, each transaction's in its call order."""
    import asyncio

    async with ecm.uow() as first:
        await first.history.append(entity_type="counterparty", entity_id="a", action="edited", actor="user:u",
                                   data={"i": 1})
        await first.history.append(entity_type="counterparty", entity_id="a", action="edited", actor="user:u",
                                   data={"i": 2})
        if backend == "postgresql":  # SQLite has one writer at a time whatever the chain does
            await asyncio.wait_for(_append(ecm, 2), timeout=30)
        await first.commit()
    async with ecm.uow() as uow:
        assert [e["data"] for e in await uow.history.of("counterparty", "a")] == [{"i": 1}, {"i": 2}]
    async with ecm.session_factory() as session:
        report = await verify_chain(session)
    assert report.intact and report.entries == (4 if backend == "postgresql" else 2)


async def test_entries_keep_their_call_order_around_an_immediate_append(ecm):
    """`append_now` (its number is needed at once) first writes what waits, and the
    next waiting entry comes after it; `of` sees the transaction's own waiting entries."""
    async with ecm.uow() as uow:
        await uow.history.append(entity_type="counterparty", entity_id="c", action="a1", actor="user:u", data={})
        seq = await uow.history.append_now(entity_type="counterparty", entity_id="c", action="a2", actor="user:u",
                                           data={})
        await uow.history.append(entity_type="counterparty", entity_id="c", action="a3", actor="user:u", data={})
        assert [e["action"] for e in await uow.history.of("counterparty", "c")] == ["a1", "a2", "a3"]
        numbered = []
        await uow.history.append(entity_type="counterparty", entity_id="c", action="a4", actor="user:u", data={},
                                 then=numbered.append)
        await uow.commit()
    async with ecm.uow() as uow:
        entries = await uow.history.of("counterparty", "c")
    assert [e["action"] for e in entries] == ["a1", "a2", "a3", "a4"]
    assert entries[1]["seq"] == seq and numbered == [entries[3]["seq"]]
    async with ecm.session_factory() as session:
        assert (await verify_chain(session)).intact
