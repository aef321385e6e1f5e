"""A registry record's card: everything the registry knows about one counterparty on one
page, for legal staff checking whom a contract is with, auditors reconciling it with the
CRM, and the steward keeping it right. Its fields and flags, the other systems'
references to it, the records merged into it and those declared distinct from it, what
match-or-propose answered when it arrived, its approvals (those the reader may see) and
its hash-chained history with who, when and why. The steward acts from the card with
the queue's own actions (edit, verify, reject, archive, merge), each coming back here."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.domain.counterparty import steward_actions
from ecm_service.entrypoints.pages import page_user, render, with_actor_names
from ecm_service.service_layer import steward
from ecm_service.service_layer.access import can_read_document
from ecm_service.service_layer.registry import COUNTERPARTY
from infra import business_day
from infra.users import User

router = APIRouter(prefix="/ui/counterparties", include_in_schema=False)
APPROVALS_SHOWN = 50


async def _approvals_of(uow, container, user: User, counterparty_id: str) -> tuple[list[dict], int]:
    """The record's approvals the reader may see, newest first, and how many it may not."""
    a, d = tables.approvals, tables.documents
    rows = (await uow.session.execute(
        select(a.c.id, a.c.title, a.c.doc_type, a.c.status, a.c.created_at, a.c.updated_at, a.c.document_id,
               d.c.owner_id, d.c.doc_type.label("document_type"))
        .join(d, d.c.id == a.c.document_id)
        .where(a.c.counterparty_id == counterparty_id)
        .order_by(a.c.created_at.desc()).limit(APPROVALS_SHOWN))).mappings().all()
    shown, hidden, today = [], 0, business_day.today()
    for row in rows:
        document = {"id": row["document_id"], "doc_type": row["document_type"], "owner_id": row["owner_id"]}
        if await can_read_document(uow, user, document, container.document_types, today):
            shown.append(dict(row))
        else:
            hidden += 1
    return shown, hidden


@router.get("/{counterparty_id}", response_class=HTMLResponse)
async def counterparty_card(counterparty_id: str, request: Request, user: User = Depends(page_user),
                            done: str | None = None, error: str | None = None):
    container = request.app.state.container
    async with container.uow() as uow:
        record = await uow.counterparties.get(counterparty_id)
        if record is None:
            raise HTTPException(404, f"counterparty {counterparty_id} not found")
        t = tables.counterparties
        merged_in = [dict(r) for r in (await uow.session.execute(
            select(t.c.id, t.c.name, t.c.updated_at).where(t.c.merged_into == record.id)
            .order_by(t.c.updated_at))).mappings()]
        related_ids = {record.merged_into} if record.merged_into else set()
        distinct_ids = await uow.counterparties.not_duplicates_of(record.id)
        decisions = await uow.counterparties.match_decisions_of([record.id])
        related_ids |= set(distinct_ids) | {c["counterparty_id"] for m in decisions for c in m["candidates"]}
        related = await uow.counterparties.get_many(sorted(related_ids))
        approvals, hidden = await _approvals_of(uow, container, user, record.id)
        context = {
            "record": record, "refs": await uow.external_refs.refs_of(COUNTERPARTY, record.id),
            "merged_in": merged_in, "related": related, "distinct": [related[i] for i in distinct_ids if i in related],
            "decisions": decisions, "approvals": approvals, "hidden_approvals": hidden,
            "approvals_limit": APPROVALS_SHOWN,
            "history": await with_actor_names(uow, await uow.history.of(COUNTERPARTY, record.id)),
        }
        actions = steward_actions(record.status) if user.role == "steward" else set()
        candidates = await steward.candidates_for(uow, record) if "merge" in actions else []
    return render(request, "counterparty.html", user, actions=actions, candidates=candidates, done=done, error=error,
                  **context)
