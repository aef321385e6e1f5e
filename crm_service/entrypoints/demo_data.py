"""A little demo data so a newcomer sees something at once. Idempotent (fixed ids)."""

import uuid
from datetime import datetime, timezone

from sqlalchemy import select

from crm_service.adapters import tables
from crm_service.domain.names import name_key, search_form

DEMO = uuid.UUID("6f0c7f3e-0000-4000-8000-000000000c12")


def demo_id(name: str) -> str:
    return str(uuid.uuid5(DEMO, name))


def _name_keys(name: str) -> dict:
    return {"name_key": name_key(name), "name_norm": search_form(name)}


async def seed_demo_data(sessions) -> None:
    now = datetime.now(timezone.utc)
    owner = str(uuid.uuid5(uuid.NAMESPACE_URL, "user:sales-anna"))
    orgs = [
        # Typed on the run: a name and nothing else.
        dict(id=demo_id("org:vector"), name="Вектор плюс", created_by=owner, owner_id=owner, created_at=now,
             **_name_keys("Вектор плюс"), region="Москва"),
        # The same company the registry already holds as verified (see the ECM demo data).
        dict(id=demo_id("org:sber"), name="Сбербанк", inn="7707083893", created_by=owner, owner_id=owner,
             created_at=now, **_name_keys("Сбербанк"), category="Банки"),
    ]
    deals = [
        dict(id=demo_id("deal:vector"), organization_id=demo_id("org:vector"), title="Supply contract 2027",
             stage="proposal", owner_id=owner, created_at=now),
    ]
    # One sales team: the manager transfers ownership within it.
    profiles = [dict(user_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{name}")), team="moscow")
                for name in ("sales-anna", "sales-boris", "sales-manager-maria")]
    async with sessions() as session, session.begin():
        for profile in profiles:
            p = tables.user_profiles
            if not (await session.execute(select(p.c.user_id).where(p.c.user_id == profile["user_id"]))).first():
                await session.execute(p.insert().values(**profile))
        for table, rows in ((tables.organizations, orgs), (tables.deals, deals)):
            for row in rows:
                exists = (await session.execute(select(table.c.id).where(table.c.id == row["id"]))).first()
                if not exists:
                    await session.execute(table.insert().values(**row))
