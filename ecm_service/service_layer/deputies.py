"""Deputies: an approver names a colleague who decides on their behalf over a range of the
company's days (BUSINESS_TIMEZONE); the decision then records both names. Shared by the
API and the pages."""

from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork


class DeputyRefused(Exception):
    """The named deputy cannot stand in (unknown, oneself, a role that never decides)."""


class NotFound(Exception):
    pass


async def name_deputy(uow: EcmUnitOfWork, *, user_id: str, deputy_name: str, starts_on: date, ends_on: date,
                      deciders: tuple[str, ...]) -> dict:
    if ends_on < starts_on:
        raise DeputyRefused("the range ends before it starts")
    async with uow:
        u = tables.users
        deputy = (await uow.session.execute(select(u.c.id, u.c.role).where(u.c.name == deputy_name))).first()
        if deputy is None:
            raise DeputyRefused(f"no user named {deputy_name!r}")
        if deputy.id == user_id:
            raise DeputyRefused("a user cannot be their own deputy")
        if deputy.role not in deciders:
            raise DeputyRefused(f"{deputy_name} ({deputy.role}) cannot decide on approvals")
        row_id = await uow.deputies.add(user_id=user_id, deputy_id=deputy.id, starts_on=starts_on, ends_on=ends_on,
                                        at=datetime.now(timezone.utc))
        await uow.history.append(entity_type="deputy", entity_id=row_id, action="named", actor=f"user:{user_id}",
                                 data={"deputy": deputy_name, "starts_on": starts_on.isoformat(),
                                       "ends_on": ends_on.isoformat()})
        await uow.commit()
    return {"id": row_id, "deputy": deputy_name, "starts_on": starts_on, "ends_on": ends_on}


async def revoke_deputy(uow: EcmUnitOfWork, *, user_id: str, deputy_row_id: str) -> None:
    async with uow:
        if not await uow.deputies.revoke(deputy_row_id, user_id, datetime.now(timezone.utc)):
            raise NotFound(f"no active deputy {deputy_row_id} of yours")
        await uow.history.append(entity_type="deputy", entity_id=deputy_row_id, action="revoked",
                                 actor=f"user:{user_id}", data={})
        await uow.commit()


async def candidates(uow: EcmUnitOfWork, *, user_id: str, deciders: tuple[str, ...]) -> list[dict]:
    """Who may be named: the other users who decide on approvals, by name."""
    u = tables.users
    rows = await uow.session.execute(select(u.c.name, u.c.role).where(u.c.role.in_(deciders), u.c.id != user_id)
                                     .order_by(u.c.name))
    return [dict(r) for r in rows.mappings()]
