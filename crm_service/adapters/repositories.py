"""Reads and writes CRM entities; sessions come from the unit of work."""

from __future__ import annotations

from sqlalchemy import bindparam, exists, func, insert, literal, select, update

from crm_service.adapters import tables
from crm_service.domain.model import (
    CLOSED_REQUEST_STATUSES,
    Activity,
    ApprovalRequest,
    Contact,
    Deal,
    Document,
    Lead,
    Organization,
)
from infra.table_repository import TableRepository, by_id, insert_into, row_of

_ORGANIZATION_SHARED = (select(tables.organizations).where(tables.organizations.c.id == bindparam("item_id"))
                        .with_for_update(read=True, key_share=True))


class OrganizationRepository(TableRepository):
    table, entity = tables.organizations, Organization

    async def live(self, organization_id: str, *, for_update: bool = False) -> Organization | None:
        """The organization something new is to be attached to: this one or, when it was
        merged, the one it was merged into (a page opened before the merge still names
        the duplicate). Read `FOR KEY SHARE`: a merge of it at this moment either waits
        for this transaction, and then moves what it adds along, or is waited for, and
        is then followed here. With `for_update`, locked for a change of its own (a
        transfer of responsibility), which a merge waits for or is followed by alike.
        None when there is no such organization."""
        statement = by_id(self.table, for_update=True) if for_update else _ORGANIZATION_SHARED
        seen: set[str] = set()
        while organization_id not in seen:
            seen.add(organization_id)
            row = (await self.session.execute(statement, {"item_id": organization_id})).mappings().first()
            if row is None:
                return None
            if not row["merged_into"]:
                return Organization(**row)
            organization_id = row["merged_into"]
        return None

    async def add_history(self, organization_id: str, *, at, kind: str, actor_id: str, detail: dict) -> None:
        self.session.insert_later(tables.organization_history, dict(
            organization_id=organization_id, at=at, kind=kind, actor_id=actor_id, detail=detail))

    async def history(self, organization_id: str) -> list[dict]:
        h = tables.organization_history
        rows = await self.session.execute(
            select(h.c.at, h.c.kind, h.c.actor_id, h.c.detail).where(h.c.organization_id == organization_id)
            .order_by(h.c.at, h.c.id))
        return [dict(r) for r in rows.mappings()]


class NotificationRepository:
    def __init__(self, session):
        self.session = session

    async def add(self, *, user_id: str, kind: str, text: str, approval_request_id: str | None, at) -> None:
        self.session.insert_later(tables.notifications, dict(
            user_id=user_id, kind=kind, text=text[:500], approval_request_id=approval_request_id, created_at=at))

    async def for_user(self, user_id: str, limit: int = 100) -> list[dict]:
        """Newest first; an approval's with what it is about: the document's file name and
        its deal (a bare "Approval approved" left the rep guessing which)."""
        n, r, d, dl = tables.notifications, tables.approval_requests, tables.documents, tables.deals
        rows = await self.session.execute(
            select(n.c.kind, n.c.text, n.c.approval_request_id, n.c.created_at,
                   d.c.filename.label("document_name"), r.c.deal_id, dl.c.title.label("deal_title"))
            .select_from(n.outerjoin(r, r.c.id == n.c.approval_request_id).outerjoin(d, d.c.id == r.c.document_id)
                         .outerjoin(dl, dl.c.id == r.c.deal_id))
            .where(n.c.user_id == user_id)
            .order_by(n.c.created_at.desc(), n.c.id.desc()).limit(limit))
        return [dict(r) for r in rows.mappings()]


class DealRepository(TableRepository):
    table, entity = tables.deals, Deal

    async def move_open_deals(self, organization_id: str, new_owner_id: str, closed_stages) -> list[str]:
        t = self.table
        ids = list((await self.session.execute(
            select(t.c.id).where(t.c.organization_id == organization_id, t.c.stage.not_in(list(closed_stages)))
            .order_by(t.c.created_at))).scalars())
        if ids:
            await self.session.execute(update(t).where(t.c.id.in_(ids)).values(owner_id=new_owner_id))
        return ids


def _labelled(table, prefix: str) -> list:
    return [c.label(f"{prefix}{c.name}") for c in table.c]


def _unlabel(row, table, prefix: str) -> dict:
    return {c.name: row[f"{prefix}{c.name}"] for c in table.c}


# A document with its deal and the deal's organization, the document's row locked and the
# organization's read FOR KEY SHARE: what an approval request needs, in one statement
# instead of three. (SQLAlchemy renders one locking clause; the second is PostgreSQL's
# suffix. The request's foreign key takes the same lock on the organization at its insert
# anyway: taken here, it is taken before the organization is read.)
_DOCUMENT_IN_CONTEXT = (
    select(*_labelled(tables.documents, "doc_"), *_labelled(tables.deals, "deal_"),
           *_labelled(tables.organizations, "org_"))
    .select_from(tables.documents
                 .join(tables.deals, tables.deals.c.id == tables.documents.c.deal_id)
                 .join(tables.organizations, tables.organizations.c.id == tables.deals.c.organization_id))
    .where(tables.documents.c.id == bindparam("document_id"), tables.deals.c.id == bindparam("deal_id"))
    .with_for_update(of=tables.documents)
    .suffix_with(f"FOR KEY SHARE OF {tables.organizations.name}", dialect="postgresql"))


class DocumentRepository(TableRepository):
    table, entity = tables.documents, Document

    async def keep_version(self, version: dict) -> None:
        """An earlier version of a document (`Document.replace_file`'s answer)."""
        await self.session.execute(insert_into(tables.document_versions), version)

    async def earlier_version_with(self, document_id: str, sha256: str) -> int | None:
        """The number of the document's earlier version with these bytes, if one has them."""
        v = tables.document_versions
        return await self.session.scalar(select(func.min(v.c.version_no)).where(
            v.c.document_id == document_id, v.c.sha256 == sha256))

    async def versions(self, document_id: str) -> list[dict]:
        """The document's earlier versions, oldest first (the current one is its row)."""
        v = tables.document_versions
        rows = await self.session.execute(select(v).where(v.c.document_id == document_id).order_by(v.c.version_no))
        return [dict(r) for r in rows.mappings()]

    async def lock_in_context(self, document_id: str, deal_id: str) -> tuple[Document, Deal, Organization] | None:
        """The document (its row locked for the rest of the transaction), its deal and the
        deal's organization; None unless the document exists on that deal.

        A merge of the organization at this moment either waits for this transaction
        (the organization is read `FOR KEY SHARE`, which the merge's lock waits for), and
        then moves along what this transaction adds for it, or is waited for: the
        organization then comes back as the merge left it, a pointer, beside the deal as
        it was read before the merge, and the statement is run again, now seeing the
        deal on the survivor. Before, a request recorded just after a merge stayed on the
        pointer, and its event told the ECM of an organization merged away."""
        seen: set[str] = set()
        while True:
            row = (await self.session.execute(
                _DOCUMENT_IN_CONTEXT, {"document_id": document_id, "deal_id": deal_id})).mappings().first()
            if row is None or not row["org_merged_into"] or row["org_id"] in seen:
                break
            seen.add(row["org_id"])
        if row is None:
            return None
        return (Document(**_unlabel(row, tables.documents, "doc_")), Deal(**_unlabel(row, tables.deals, "deal_")),
                Organization(**_unlabel(row, tables.organizations, "org_")))


_OPEN_FOR_DOCUMENT = (
    select(tables.approval_requests)
    .where(tables.approval_requests.c.document_id == bindparam("document_id"),
           tables.approval_requests.c.status.not_in(CLOSED_REQUEST_STATUSES))
    .order_by(tables.approval_requests.c.requested_at.desc()).limit(1))


def _insert_unless_open():
    """INSERT ... SELECT <the request's values> WHERE no open request for its document
    exists. A statement of its own sees what committed before it started: run after the
    document's row is locked, it cannot miss a request a concurrent call just committed."""
    t = tables.approval_requests
    still_open = select(t.c.id).where(t.c.document_id == bindparam("open_document_id"),
                                      t.c.status.not_in(CLOSED_REQUEST_STATUSES))
    values = select(*[bindparam(c.name, type_=c.type) for c in t.c]).where(~exists(still_open))
    return insert(t).from_select([c.name for c in t.c], values).returning(t.c.id)


_INSERT_UNLESS_OPEN = _insert_unless_open()


class ApprovalRequestRepository(TableRepository):
    table, entity = tables.approval_requests, ApprovalRequest

    async def add_unless_open(self, request: ApprovalRequest) -> bool:
        """Adds the request unless another one for its document is still open (False
        then); one statement. The caller holds the document's lock (`lock_in_context`)."""
        values = {**row_of(request), "open_document_id": request.document_id}
        return (await self.session.execute(_INSERT_UNLESS_OPEN, values)).first() is not None

    async def latest_for_deal(self, deal_id: str) -> ApprovalRequest | None:
        t = self.table
        row = (
            await self.session.execute(
                select(t).where(t.c.deal_id == deal_id).order_by(t.c.requested_at.desc()).limit(1)
            )
        ).mappings().first()
        return ApprovalRequest(**row) if row else None

    async def open_for_document(self, document_id: str) -> ApprovalRequest | None:
        """The request for this document still on its way: not approved or rejected (one
        returned for changes waits for the document's next version)."""
        row = (await self.session.execute(_OPEN_FOR_DOCUMENT, {"document_id": document_id})).mappings().first()
        return ApprovalRequest(**row) if row else None

    def __init__(self, session):
        super().__init__(session)
        self._statuses: list[dict] = []

    async def record_status(self, request: ApprovalRequest, command_id: str, changed_at=None) -> None:
        """Gathered and written at commit (`flush`), one statement for a batch of commands."""
        self._statuses.append(dict(
            approval_request_id=request.id, status=request.status, stage=request.stage, revision=request.revision,
            command_id=command_id, changed_at=changed_at, applied_at=request.updated_at))

    async def flush(self) -> None:
        if self._statuses:
            rows, self._statuses = self._statuses, []
            await self.session.execute(insert_into(tables.approval_status_history), rows)

    async def status_history(self, request_id: str) -> list[dict]:
        await self.flush()
        h = tables.approval_status_history
        rows = await self.session.execute(
            select(h).where(h.c.approval_request_id == request_id).order_by(h.c.applied_at, h.c.id))
        return [dict(r) for r in rows.mappings()]


class ContactRepository(TableRepository):
    table, entity = tables.contacts, Contact

    async def of_organization(self, organization_id: str) -> list[Contact]:
        t = self.table
        rows = await self.session.execute(select(t).where(t.c.organization_id == organization_id)
                                          .order_by(t.c.full_name))
        return [Contact(**r) for r in rows.mappings()]


class LeadRepository(TableRepository):
    table, entity = tables.leads, Lead


class ActivityRepository(TableRepository):
    table, entity = tables.activities, Activity

    async def move_open(self, organization_id: str, deal_ids: list[str], new_owner_id: str) -> list[str]:
        """Open activities of the organization and of the moved deals follow the new owner."""
        t = self.table
        where = t.c.organization_id == organization_id
        if deal_ids:
            where = where | t.c.deal_id.in_(deal_ids)
        ids = list((await self.session.execute(
            select(t.c.id).where(where, t.c.done_at.is_(None)).order_by(t.c.created_at))).scalars())
        if ids:
            await self.session.execute(update(t).where(t.c.id.in_(ids)).values(owner_id=new_owner_id))
        return ids


def content_holders() -> list:
    """What names the file store's files: each document's current file and its earlier
    versions."""
    d, v = tables.documents, tables.document_versions
    return [select(d.c.sha256, literal("document"), d.c.id, d.c.version_no),
            select(v.c.sha256, literal("document"), v.c.document_id, v.c.version_no)]
