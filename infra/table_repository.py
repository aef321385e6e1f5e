"""A repository over one table whose rows map one-to-one onto a dataclass."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession


class TableRepository:
    table: Table
    entity: type

    def __init__(self, session: AsyncSession):
        self.session = session

    async def add(self, item) -> None:
        await self.session.execute(insert(self.table).values(**asdict(item)))

    async def get(self, item_id: str, *, for_update: bool = False):
        query = select(self.table).where(self.table.c.id == item_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.session.execute(query)).mappings().first()
        return self.entity(**row) if row else None

    async def get_many(self, ids: list[str]) -> dict:
        """id -> entity, for those of the ids that exist (one statement per 1,000)."""
        found = {}
        for start in range(0, len(ids), 1000):
            rows = await self.session.execute(select(self.table).where(self.table.c.id.in_(ids[start:start + 1000])))
            found.update((row["id"], self.entity(**row)) for row in rows.mappings())
        return found

    async def save(self, item) -> None:
        values = asdict(item)
        await self.session.execute(update(self.table).where(self.table.c.id == values.pop("id")).values(**values))
