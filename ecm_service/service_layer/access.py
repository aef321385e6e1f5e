"""Who may see what: rights by role and by participation, enforced here for the API and
the pages alike.

- auditors, admins and the integration account read every document and approval;
- a document is visible to its owner, to the participants of its approvals (holders of a
  place by role or by name, whoever decided, the stage's escalation role, and the
  deputies of any of them), and to the roles its document type grants;
- an approval is visible to whoever may see its document."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.domain.approval import Actor
from ecm_service.domain.document_types import DocumentType, policy_for
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork

READ_EVERYTHING = ("auditor", "admin", "integration")


class Forbidden(Exception):
    pass


async def participates(uow: EcmUnitOfWork, document_id: str, people: list[Actor]) -> bool:
    """Anyone a stage of one of the document's approvals names (now or later in its
    route, by role or by name, or as its escalation role), or who decided on one."""
    s, a, ap = tables.approval_steps, tables.approval_assignments, tables.approvals
    steps = (await uow.session.execute(
        select(s.c.assignees, s.c.escalation_role).join(ap, ap.c.id == s.c.approval_id)
        .where(ap.c.document_id == document_id))).all()
    for who in people:
        for assignees, escalation_role in steps:
            if escalation_role == who.role or any(
                    x.get("user") == who.name or (x.get("role") == who.role and not x.get("user")) for x in assignees):
                return True
    decided = await uow.session.execute(
        select(a.c.id).join(ap, ap.c.id == a.c.approval_id)
        .where(ap.c.document_id == document_id, a.c.decided_by.in_([p.id for p in people])).limit(1))
    return decided.first() is not None


async def can_read_document(uow: EcmUnitOfWork, user, document: dict, doc_types: dict[str, DocumentType],
                            today: date) -> bool:
    if user.role in READ_EVERYTHING or document["owner_id"] == user.id:
        return True
    if user.role in policy_for(doc_types, document["doc_type"]).readers:
        return True
    actor = Actor(id=user.id, name=user.name, role=user.role)
    return await participates(uow, document["id"], [actor, *await uow.deputies.principals_of(user.id, today)])


async def ensure_document_readable(uow: EcmUnitOfWork, user, document: dict, doc_types, today: date) -> None:
    if not await can_read_document(uow, user, document, doc_types, today):
        raise Forbidden(f"{user.name} ({user.role}) neither owns document {document['id']}, takes part in its "
                        "approvals, nor holds a role its type grants")
