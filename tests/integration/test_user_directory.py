"""Who a token belongs to (infra.users.UserDirectory) on both backends: a found user is
remembered for the configured seconds and no longer; an unknown token is never
remembered, so a token created a moment later works at once; 0 seconds looks up every
time."""

import uuid

from sqlalchemy import delete, update

from crm_service.adapters import tables
from infra import users
from infra.tokens import hash_token
from infra.users import UserDirectory, upsert_user


async def _remove(crm, token: str) -> None:
    async with crm.session_factory() as session, session.begin():
        await session.execute(delete(tables.users).where(tables.users.c.token_hash == hash_token(token)))


async def test_a_found_user_is_remembered_for_its_seconds_only(crm, monkeypatch):
    clock = [1000.0]  # the directory's clock, moved by hand (a slow machine cannot make this flaky)
    monkeypatch.setattr(users.time, "monotonic", lambda: clock[0])
    token = uuid.uuid4().hex
    await upsert_user(crm.session_factory, tables.users, name="anna", role="sales", token=token)
    directory = UserDirectory(crm.session_factory, tables.users, cache_seconds=5)
    found = await directory.by_token(token)
    assert (found.name, found.role) == ("anna", "sales")
    await _remove(crm, token)
    clock[0] += 4.9
    assert await directory.by_token(token) == found  # remembered: no lookup
    clock[0] += 0.2
    assert await directory.by_token(token) is None  # looked up again: gone


async def test_an_unknown_token_is_not_remembered(crm):
    token = uuid.uuid4().hex
    directory = UserDirectory(crm.session_factory, tables.users, cache_seconds=60)
    assert await directory.by_token(token) is None
    await upsert_user(crm.session_factory, tables.users, name="boris", role="manager", token=token)
    assert (await directory.by_token(token)).role == "manager"


async def test_zero_seconds_looks_up_every_time(crm):
    token = uuid.uuid4().hex
    await upsert_user(crm.session_factory, tables.users, name="vera", role="sales", token=token)
    directory = UserDirectory(crm.session_factory, tables.users, cache_seconds=0)
    assert (await directory.by_token(token)).role == "sales"
    async with crm.session_factory() as session, session.begin():
        await session.execute(update(tables.users).where(tables.users.c.name == "vera").values(role="auditor"))
    assert (await directory.by_token(token)).role == "auditor"


async def test_the_service_uses_the_configured_seconds(crm):
    assert crm.users is crm.users  # one directory per process
    assert crm.users._seconds == crm.settings.token_cache_seconds == 5.0


async def test_replicas_registering_the_same_user_at_once_all_succeed(crm):
    # Every replica of a service upserts its integration user as it starts; a rollout
    # starts them together.
    import asyncio

    tokens = [uuid.uuid4().hex for _ in range(4)]
    ids = await asyncio.gather(*(upsert_user(crm.session_factory, tables.users, name="crm-integration-race",
                                             role="integration", token=t) for t in tokens))
    assert len(set(ids)) == 1
    directory = UserDirectory(crm.session_factory, tables.users, cache_seconds=0)
    assert sum([await directory.by_token(t) is not None for t in tokens]) == 1  # the last write's token
