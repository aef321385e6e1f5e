"""Reads and writes CRM entities; sessions come from the unit of work."""

from __future__ import annotations

from sqlalchemy import insert, select

from crm_service.adapters import tables
from crm_service.domain.model import ApprovalRequest, Deal, Document, Organization
from infra.table_repository import TableRepository


class OrganizationRepository(TableRepository):
    table, entity = tables.organizations, Organization


class DealRepository(TableRepository):
    table, entity = tables.deals, Deal


class DocumentRepository(TableRepository):
    table, entity = tables.documents, Document


class ApprovalRequestRepository(TableRepository):
    table, entity = tables.approval_requests, ApprovalRequest

    async def latest_for_deal(self, deal_id: str) -> ApprovalRequest | None:
        t = self.table
        row = (
            await self.session.execute(
                select(t).where(t.c.deal_id == deal_id).order_by(t.c.requested_at.desc()).limit(1)
            )
        ).mappings().first()
        return ApprovalRequest(**row) if row else None

    async def record_status(self, request: ApprovalRequest, command_id: str) -> None:
        await self.session.execute(insert(tables.approval_status_history).values(
            approval_request_id=request.id, status=request.status, stage=request.stage, revision=request.revision,
            command_id=command_id, applied_at=request.updated_at))

    async def status_history(self, request_id: str) -> list[dict]:
        h = tables.approval_status_history
        rows = await self.session.execute(
            select(h).where(h.c.approval_request_id == request_id).order_by(h.c.applied_at, h.c.id))
        return [dict(r) for r in rows.mappings()]
