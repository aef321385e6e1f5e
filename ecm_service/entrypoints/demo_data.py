"""Demo registry content: one verified counterparty, so a CRM organization with the
same INN is linked instead of duplicated. Idempotent (fixed ids)."""

import uuid
from datetime import datetime, timezone

from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.adapters.repositories import write_name_keys
from ecm_service.domain.matching import match_name

DEMO = uuid.UUID("6f0c7f3e-0000-4000-8000-000000000ec3")


async def seed_demo_data(sessions) -> None:
    now = datetime.now(timezone.utc)
    record = dict(
        id=str(uuid.uuid5(DEMO, "counterparty:sber")), name='ПАО "Сбербанк России"', status="verified",
        inn="7707083893", kpp="773601001", ogrn="1027700132195", legal_form="ПАО", country="RU",
        quality_flags=[], normalized_name='ПАО СБЕРБАНК РОССИИ', match_name=match_name('ПАО "Сбербанк России"'),
        created_at=now, updated_at=now,
    )
    async with sessions() as session, session.begin():
        t = tables.counterparties
        if not (await session.execute(select(t.c.id).where(t.c.id == record["id"]))).first():
            await session.execute(t.insert().values(**record))
            await write_name_keys(session, [(record["id"], record["name"], record["status"])], replace=False)
