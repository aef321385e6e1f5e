"""Route versions, deputies, delay reasons and notifications: what approvals lean on."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ecm_service.adapters import tables
from ecm_service.domain.approval import Actor


class RouteStore:
    """One transaction's view of the route versions: the latest version of a document
    type is read once per transaction (a group of commands starts many approvals on the
    same few routes); adding a version forgets what was read."""

    def __init__(self, session: AsyncSession):
        self.session = session
        self._latest: dict[str, dict | None] = {}

    async def latest(self, doc_type: str) -> dict | None:
        if doc_type not in self._latest:
            t = tables.route_versions
            row = (await self.session.execute(
                select(t).where(t.c.doc_type == doc_type).order_by(t.c.version.desc()).limit(1))).mappings().first()
            self._latest[doc_type] = dict(row) if row else None
        found = self._latest[doc_type]
        return dict(found) if found else None

    async def latest_from(self, doc_type: str, source: str) -> dict | None:
        t = tables.route_versions
        row = (await self.session.execute(
            select(t).where(t.c.doc_type == doc_type, t.c.source == source)
            .order_by(t.c.version.desc()).limit(1))).mappings().first()
        return dict(row) if row else None

    async def versions(self, doc_type: str | None = None) -> list[dict]:
        t = tables.route_versions
        query = select(t).order_by(t.c.doc_type, t.c.version)
        if doc_type:
            query = query.where(t.c.doc_type == doc_type)
        return [dict(r) for r in (await self.session.execute(query)).mappings()]

    async def add(self, doc_type: str, spec: dict, *, source: str, created_by: str, at: datetime) -> int:
        latest = await self.latest(doc_type)
        version = (latest["version"] if latest else 0) + 1
        await self.session.execute(insert(tables.route_versions).values(
            doc_type=doc_type, version=version, spec=spec, source=source, created_by=created_by, created_at=at))
        self._latest.pop(doc_type, None)
        return version

    async def in_flight_by_version(self) -> list[dict]:
        t = tables.approvals
        rows = await self.session.execute(
            select(t.c.route_doc_type, t.c.route_version, t.c.status, func.count())
            .where(t.c.status.in_(("in_progress", "awaiting_counterparty_verification", "returned")))
            .group_by(t.c.route_doc_type, t.c.route_version, t.c.status)
            .order_by(t.c.route_doc_type, t.c.route_version))
        return [{"doc_type": d, "version": v, "status": s, "count": n} for d, v, s, n in rows]


class DeputyRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def add(self, *, user_id: str, deputy_id: str, starts_on: date, ends_on: date, at: datetime) -> str:
        deputy_row_id = str(uuid.uuid4())
        await self.session.execute(insert(tables.deputies).values(
            id=deputy_row_id, user_id=user_id, deputy_id=deputy_id, starts_on=starts_on, ends_on=ends_on,
            created_at=at))
        return deputy_row_id

    async def revoke(self, deputy_row_id: str, user_id: str, at: datetime) -> bool:
        t = tables.deputies
        result = await self.session.execute(
            update(t).where(t.c.id == deputy_row_id, t.c.user_id == user_id, t.c.revoked_at.is_(None))
            .values(revoked_at=at))
        return result.rowcount > 0

    async def of_user(self, user_id: str) -> list[dict]:
        """Deputies a user has named, and whom they stand in for, newest first."""
        t, u, d = tables.deputies, tables.users.alias("principal"), tables.users.alias("deputy")
        rows = await self.session.execute(
            select(t, u.c.name.label("user_name"), d.c.name.label("deputy_name"))
            .join(u, u.c.id == t.c.user_id).join(d, d.c.id == t.c.deputy_id)
            .where((t.c.user_id == user_id) | (t.c.deputy_id == user_id)).order_by(t.c.created_at.desc()))
        return [dict(r) for r in rows.mappings()]

    async def principals_of(self, deputy_id: str, on: date) -> list[Actor]:
        """The people the deputy stands in for on that day."""
        t, u = tables.deputies, tables.users
        rows = await self.session.execute(
            select(u.c.id, u.c.name, u.c.role).join(t, t.c.user_id == u.c.id)
            .where(t.c.deputy_id == deputy_id, t.c.revoked_at.is_(None), t.c.starts_on <= on, t.c.ends_on >= on)
            .order_by(u.c.name))
        return [Actor(id=i, name=n, role=r) for i, n, r in rows]


class DelayReasonRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def add(self, **values) -> None:
        await self.session.execute(insert(tables.delay_reasons).values(id=str(uuid.uuid4()), **values))

    async def of_approval(self, approval_id: str) -> list[dict]:
        t = tables.delay_reasons
        rows = await self.session.execute(select(t).where(t.c.approval_id == approval_id).order_by(t.c.recorded_at))
        return [dict(r) for r in rows.mappings()]

    async def report(self, *, since: datetime | None = None) -> list[dict]:
        t = tables.delay_reasons
        query = (select(t.c.stage_name, t.c.role, t.c.doc_type, t.c.code, func.count().label("count"))
                 .group_by(t.c.stage_name, t.c.role, t.c.doc_type, t.c.code)
                 .order_by(func.count().desc(), t.c.stage_name, t.c.code))
        if since:
            query = query.where(t.c.recorded_at >= since)
        return [dict(r) for r in (await self.session.execute(query)).mappings()]


class NotificationRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def add(self, **values) -> None:
        await self.session.execute(insert(tables.notifications).values(id=str(uuid.uuid4()), **values))

    async def for_actor(self, actor: Actor, limit: int = 50) -> list[dict]:
        t = tables.notifications
        rows = await self.session.execute(
            select(t).where((t.c.to_role == actor.role) | (t.c.to_user == actor.name))
            .order_by(t.c.created_at.desc()).limit(limit))
        return [dict(r) for r in rows.mappings()]
