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

    async def save(self, item) -> None:
        values = asdict(item)
        await self.session.execute(update(self.table).where(self.table.c.id == values.pop("id")).values(**values))
