"""Sales use cases: organizations (edit, search, duplicate hints, merge), contacts, leads
and their conversion, deals on the funnel, activities and "my day", the organization's
timeline, and documents generated from templates. Lenient everywhere: missing data is
never a reason to refuse."""

from __future__ import annotations

import asyncio
import io
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import and_, func, or_, select, update

from crm_service.adapters import tables
from crm_service.domain.hints import identifier_hints
from crm_service.domain.model import (
    ACTIVITY_KINDS,
    CLOSED_REQUEST_STATUSES,
    Activity,
    Contact,
    Deal,
    Lead,
    Organization,
    filled_from,
    opening_stage,
    unanswered,
)
from crm_service.domain.names import HINT_THRESHOLD, name_key, normalize, similarity
from crm_service.domain.rights import Actor
from crm_service.service_layer.handlers import (  # noqa: F401  (actor_for: the entrypoints call it from here)
    SOURCE,
    InvalidRequest,
    NotFound,
    _new_id,
    _now,
    actor_for,
    check_owned,
)
from crm_service.service_layer.unit_of_work import CrmUnitOfWork
from infra import business_day
from schemas import crm_events
from schemas.envelope import new_envelope
from schemas.topics import CRM_EVENTS

log = structlog.get_logger()

# What a merge fills in the survivor from the duplicate (`filled_from`).
MERGE_FILLS = ("inn", "kpp", "ogrn", "legal_form", "website", "region", "category", "activity_type", "phones",
               "emails")
ORG_FIELDS = ("name", "inn", "kpp", "ogrn", "legal_form", "country", "addresses", "phones", "emails", "website",
              "activity_type", "region", "org_group", "category", "lead_source", "notes")
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "document_templates"


# --- organizations -------------------------------------------------------------------------


async def update_organization(uow: CrmUnitOfWork, *, actor: Actor, organization_id: str, changes: dict) -> Organization:
    async with uow:
        org = await uow.organizations.get(organization_id, for_update=True)
        if org is None or org.merged_into:
            raise NotFound(f"organization {organization_id} not found")
        await check_owned(uow, actor, org.owner_id or org.created_by, "organization")
        if "name" in changes and not (changes["name"] or "").strip():
            raise InvalidRequest("an organization keeps a name; it cannot be emptied")
        changes = {k: ([] if v is None and k in ("addresses", "phones", "emails") else v) for k, v in changes.items()}
        changed = sorted(k for k, v in changes.items() if k in ORG_FIELDS and getattr(org, k) != v)
        for key in changed:
            setattr(org, key, changes[key])
        if changed:
            org.refresh_name_key()
            org.updated_at = _now()
            await uow.organizations.save(org)
            # Field names only: values may be personal data (phones, e-mails).
            await uow.organizations.add_history(org.id, at=org.updated_at, kind="edited", actor_id=actor.id,
                                                detail={"fields": changed})
        await uow.commit()
    return org


async def search_organizations(uow: CrmUnitOfWork, *, q: str | None = None, owner_id: str | None = None,
                               region: str | None = None, category: str | None = None,
                               link_status: str | None = None, limit: int = 50, offset: int = 0,
                               after_id: str | None = None) -> tuple[list, int]:
    """By name, or — with `after_id` — in id order after that id (keyset paging that a
    long-running reader can resume from)."""
    t = tables.organizations
    where = [t.c.merged_into.is_(None)]
    text = (q or "").strip()
    if text.isdigit():
        where.append(or_(t.c.inn == text, t.c.ogrn == text))
    elif text:
        # The text as typed, in any case (`%` and `_` are letters here, not wildcards), or
        # each of its words in the normalised name, in any order: "рога" finds "Рога и
        # копыта" on SQLite too, whose ILIKE folds ASCII only; "ооо рога" finds it as well.
        words = normalize(text).split()
        where.append(or_(t.c.name.icontains(text, autoescape=True),
                         *([and_(*(t.c.name_norm.contains(w, autoescape=True) for w in words))] if words else [])))
    if owner_id:
        where.append(t.c.owner_id == owner_id)
    if region:
        where.append(t.c.region == region)
    if category:
        where.append(t.c.category == category)
    if link_status == "none":
        where.append(t.c.registry_status.is_(None))
    elif link_status:
        where.append(t.c.registry_status == link_status)
    total = await uow.session.scalar(select(func.count()).select_from(t).where(*where))
    if after_id is not None:
        where.append(t.c.id > after_id)
        query = select(t).where(*where).order_by(t.c.id).limit(limit)
    else:
        # Alphabetical as people read it: case, quotes and the legal form aside ("яблоко"
        # after "ООО «Альфа»", not after every capitalised name; '"Вега"' under В).
        query = select(t).where(*where).order_by(t.c.name_norm, t.c.name, t.c.id).limit(limit).offset(offset)
    rows = await uow.session.execute(query)
    return [Organization(**r) for r in rows.mappings()], total


async def duplicate_hints(uow: CrmUnitOfWork, *, name: str, inn: str | None, exclude_id: str | None = None,
                          limit: int = 5) -> list[dict]:
    """Same INN, or a similar name (rapidfuzz on normalised names) among organizations
    sharing the name's blocking key. A hint, never a refusal."""
    t = tables.organizations
    keys = [t.c.name_key == name_key(name)] if name_key(name) else []
    if inn:
        keys.append(t.c.inn == inn)
    if not keys:
        return []
    rows = await uow.session.execute(
        select(t.c.id, t.c.name, t.c.inn).where(or_(*keys), t.c.merged_into.is_(None),
                                                 t.c.id != (exclude_id or "")).limit(500))
    hints = []
    for other_id, other_name, other_inn in rows:
        if inn and other_inn == inn:
            hints.append({"id": other_id, "name": other_name, "reason": "same INN", "score": 100.0})
            continue
        score = similarity(name, other_name)
        if score >= HINT_THRESHOLD:
            hints.append({"id": other_id, "name": other_name, "reason": "similar name", "score": round(score, 1)})
    return sorted(hints, key=lambda h: -h["score"])[:limit]


async def merge_organizations(uow: CrmUnitOfWork, *, actor: Actor, organization_id: str, into_id: str,
                              correlation_id: str) -> Organization:
    """The duplicate's deals, contacts, activities, approval requests and history move to
    the survivor; the duplicate stays as a pointer; the merge is an event."""
    if organization_id == into_id:
        raise InvalidRequest("an organization cannot be merged into itself")
    async with uow:
        first, second = sorted((organization_id, into_id))
        locked = {i: await uow.organizations.get(i, for_update=True) for i in (first, second)}
        loser, survivor = locked[organization_id], locked[into_id]
        if loser is None or survivor is None or loser.merged_into or survivor.merged_into:
            raise NotFound("both organizations must exist and not be merged already")
        for org in (loser, survivor):
            await check_owned(uow, actor, org.owner_id or org.created_by, "organization")
        moved = {}
        for table in (tables.deals, tables.contacts, tables.activities, tables.approval_requests,
                      tables.organization_history):
            result = await uow.session.execute(update(table).where(table.c.organization_id == loser.id)
                                               .values(organization_id=survivor.id))
            moved[table.name] = result.rowcount
        at = _now()
        # Empty fields of the survivor are filled from the duplicate; nothing is overwritten.
        for key, value in filled_from(vars(survivor), vars(loser), MERGE_FILLS).items():
            setattr(survivor, key, value)
        survivor.updated_at = loser.updated_at = at
        loser.merged_into = survivor.id
        await uow.organizations.save(survivor)
        await uow.organizations.save(loser)
        await uow.organizations.add_history(survivor.id, at=at, kind="merged", actor_id=actor.id,
                                            detail={"merged": loser.id, "name": loser.name, "moved": moved})
        event = crm_events.OrganizationsMergedV1(merged_id=loser.id, survivor_id=survivor.id, merged_by=actor.id,
                                                 merged_at=at)
        # Under the merged organization's key, behind every earlier message about it (an
        # approval requested for it just before, say): the ECM moves its reference to the
        # survivor only after everything the duplicate sent.
        await uow.publish(CRM_EVENTS, loser.id, new_envelope(
            type=crm_events.ORGANIZATIONS_MERGED, schema_version=1, source=SOURCE, payload=event,
            correlation_id=correlation_id))
        await uow.commit()
    return survivor


# --- contacts and leads --------------------------------------------------------------------


async def create_contact(uow: CrmUnitOfWork, *, actor: Actor, full_name: str, **fields) -> Contact:
    contact = Contact(id=_new_id(), full_name=full_name, owner_id=actor.id, created_at=_now(), **fields)
    async with uow:
        if contact.organization_id:
            if (org := await uow.organizations.live(contact.organization_id)) is None:
                raise NotFound(f"organization {contact.organization_id} not found")
            contact.organization_id = org.id
        await uow.contacts.add(contact)
        await uow.commit()
    return contact


async def create_lead(uow: CrmUnitOfWork, *, actor: Actor, title: str, **fields) -> Lead:
    lead = Lead(id=_new_id(), title=title, owner_id=actor.id, created_at=_now(), **fields)
    async with uow:
        await uow.leads.add(lead)
        await uow.commit()
    return lead


async def _open_lead(uow: CrmUnitOfWork, actor: Actor, lead_id: str) -> Lead:
    """The lead, locked, still open, and the actor's to change."""
    lead = await uow.leads.get(lead_id, for_update=True)
    if lead is None:
        raise NotFound(f"lead {lead_id} not found")
    if lead.status != "open":
        raise InvalidRequest(f"the lead is already {lead.status}")
    await check_owned(uow, actor, lead.owner_id, "lead")
    return lead


async def convert_lead(uow: CrmUnitOfWork, *, actor: Actor, lead_id: str, create_contact: bool = True,
                       create_organization: bool = True, create_deal: bool = True,
                       organization_id: str | None = None, deal_title: str | None = None,
                       funnel: dict) -> dict:
    """Any combination of contact, organization and deal in one action. An existing
    organization is used when one is named, or when the lead's INN or company name
    clearly matches one; missing data never stops the conversion."""
    async with uow:
        lead = await _open_lead(uow, actor, lead_id)
        at, result = _now(), {"linked_existing_organization": False}
        org = None
        if organization_id:
            org = await uow.organizations.live(organization_id)
            if org is None:
                raise NotFound(f"organization {organization_id} not found")
            result["linked_existing_organization"] = True
        elif create_organization or create_deal:
            company = lead.company_name or lead.person_name or lead.title
            hints = await duplicate_hints(uow, name=company, inn=lead.inn)
            strong = [h for h in hints if h["reason"] == "same INN" or h["score"] >= 95]
            if strong:
                org = await uow.organizations.live(strong[0]["id"])
                result["linked_existing_organization"] = True
            else:
                org = Organization(id=_new_id(), name=company, created_by=actor.id, owner_id=actor.id, created_at=at,
                                   inn=lead.inn, phones=list(lead.phones) if not lead.person_name else [],
                                   emails=list(lead.emails) if not lead.person_name else [],
                                   lead_source=lead.source)
                org.refresh_name_key()
                await uow.organizations.add(org)
                await uow.organizations.add_history(org.id, at=at, kind="created_from_lead", actor_id=actor.id,
                                                    detail={"lead_id": lead.id})
        contact = None
        if create_contact and (lead.person_name or lead.phones or lead.emails):
            contact = Contact(id=_new_id(), full_name=lead.person_name or lead.title, owner_id=actor.id,
                              created_at=at, organization_id=org.id if org else None, phones=list(lead.phones),
                              emails=list(lead.emails))
            await uow.contacts.add(contact)
        deal = None
        if create_deal and org is not None:
            stage, probability = opening_stage(funnel)
            deal = Deal(id=_new_id(), organization_id=org.id, title=deal_title or lead.title, owner_id=actor.id,
                        created_at=at, stage=stage, probability=probability)
            await uow.deals.add(deal)
            await _record_stage(uow, deal, None, actor.id, at)
        lead.status, lead.converted_at = "converted", at
        lead.organization_id = org.id if org else None
        lead.contact_id, lead.deal_id = (contact.id if contact else None), (deal.id if deal else None)
        await uow.leads.save(lead)
        await uow.commit()
    return {**result, "organization_id": lead.organization_id, "contact_id": lead.contact_id,
            "deal_id": lead.deal_id}


async def disqualify_lead(uow: CrmUnitOfWork, *, actor: Actor, lead_id: str, reason: str) -> Lead:
    async with uow:
        lead = await _open_lead(uow, actor, lead_id)
        lead.status = "disqualified"
        lead.notes = f"{lead.notes}\n" if lead.notes else ""
        lead.notes += f"Disqualified: {reason}"
        await uow.leads.save(lead)
        await uow.commit()
    return lead


# --- deals on the funnel -------------------------------------------------------------------


async def _record_stage(uow: CrmUnitOfWork, deal: Deal, from_stage: str | None, actor_id: str, at) -> None:
    await uow.session.execute(tables.deal_stage_history.insert().values(
        deal_id=deal.id, from_stage=from_stage, to_stage=deal.stage, actor_id=actor_id, at=at))


async def update_deal(uow: CrmUnitOfWork, *, actor: Actor, deal_id: str, changes: dict, funnel: dict) -> Deal:
    """Amount, currency, expected close date, probability, title, and the stage (from the
    configured funnel; each move is in the stage history with who and when)."""
    async with uow:
        deal = await uow.deals.get(deal_id, for_update=True)
        if deal is None:
            raise NotFound(f"deal {deal_id} not found")
        await check_owned(uow, actor, deal.owner_id, "deal")
        if "title" in changes and not (changes["title"] or "").strip():
            raise InvalidRequest("a deal keeps a title; it cannot be emptied")
        at = _now()
        stage = changes.pop("stage", None)
        for key, value in changes.items():
            setattr(deal, key, value)
        if stage and stage != deal.stage:
            if stage not in funnel["stages"]:
                raise InvalidRequest(f"unknown stage {stage!r}; the funnel is {', '.join(funnel['stages'])}")
            previous, deal.stage = deal.stage, stage
            if "probability" not in changes and stage in funnel.get("probability", {}):
                deal.probability = funnel["probability"][stage]
            deal.closed_at = at if stage in funnel["closed"] else None
            await _record_stage(uow, deal, previous, actor.id, at)
        await uow.deals.save(deal)
        await uow.commit()
    return deal


async def deal_board(uow: CrmUnitOfWork, funnel: dict, *, owner_id: str | None = None) -> dict[str, list[dict]]:
    t, o = tables.deals, tables.organizations
    query = select(t, o.c.name.label("organization_name")).join(o, o.c.id == t.c.organization_id)
    if owner_id:
        query = query.where(t.c.owner_id == owner_id)
    board = {stage: [] for stage in funnel["stages"]}
    for row in (await uow.session.execute(query.order_by(t.c.created_at.desc()).limit(2000))).mappings():
        board.setdefault(row["stage"], []).append(dict(row))
    return board


async def stage_history(uow: CrmUnitOfWork, deal_id: str) -> list[dict]:
    h = tables.deal_stage_history
    rows = await uow.session.execute(select(h).where(h.c.deal_id == deal_id).order_by(h.c.at, h.c.id))
    return [dict(r) for r in rows.mappings()]


# --- activities ----------------------------------------------------------------------------


async def create_activity(uow: CrmUnitOfWork, *, actor: Actor, kind: str, subject: str, **fields) -> Activity:
    if kind not in ACTIVITY_KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(ACTIVITY_KINDS)}")
    activity = Activity(id=_new_id(), kind=kind, subject=subject, owner_id=actor.id, created_at=_now(), **fields)
    async with uow:
        if activity.deal_id:
            deal = await uow.deals.get(activity.deal_id)
            if deal is None:
                raise NotFound(f"deal {activity.deal_id} not found")
            activity.organization_id = activity.organization_id or deal.organization_id
        if activity.organization_id:
            if (org := await uow.organizations.live(activity.organization_id)) is None:
                raise NotFound(f"organization {activity.organization_id} not found")
            activity.organization_id = org.id
        if activity.contact_id and await uow.contacts.get(activity.contact_id) is None:
            raise NotFound(f"contact {activity.contact_id} not found")
        await uow.activities.add(activity)
        await uow.commit()
    return activity


async def complete_activity(uow: CrmUnitOfWork, *, actor: Actor, activity_id: str) -> Activity:
    async with uow:
        activity = await uow.activities.get(activity_id, for_update=True)
        if activity is None:
            raise NotFound(f"activity {activity_id} not found")
        await check_owned(uow, actor, activity.owner_id, "activity")
        if activity.done_at is None:
            activity.done_at = _now()
            await uow.activities.save(activity)
        await uow.commit()
    return activity


async def my_day(uow: CrmUnitOfWork, *, user_id: str, unanswered_after: timedelta, now: datetime | None = None) -> dict:
    """Today's planned calls, meetings and tasks, and everything overdue, oldest first; and
    where the approvals of the rep's deals that are still open stand, newest first."""
    now = now or _now()
    day = business_day.today(now)
    _, end = business_day.day_bounds(day)
    t, o = tables.activities, tables.organizations
    base = (select(t, o.c.name.label("organization_name")).outerjoin(o, o.c.id == t.c.organization_id)
            .where(t.c.owner_id == user_id, t.c.done_at.is_(None), t.c.due_at.is_not(None)))
    overdue = await uow.session.execute(base.where(t.c.due_at < now).order_by(t.c.due_at))
    today = await uow.session.execute(base.where(t.c.due_at >= now, t.c.due_at < end).order_by(t.c.due_at))
    return {"date": day.isoformat(), "overdue": [dict(r) for r in overdue.mappings()],
            "today": [dict(r) for r in today.mappings()],
            "approvals": await approvals_of(uow, owned_by=user_id, open_only=True, unanswered_after=unanswered_after)}


async def due_reminders(uow: CrmUnitOfWork, *, now: datetime, ahead: timedelta) -> list[dict]:
    """Activities due within `ahead` (or overdue) that were not reminded yet: each gets one
    notification, and the owner's hook (if set) is returned for delivery."""
    t, p = tables.activities, tables.user_profiles
    sent = []
    async with uow:
        rows = await uow.session.execute(
            select(t, p.c.notify_hook).outerjoin(p, p.c.user_id == t.c.owner_id)
            .where(t.c.done_at.is_(None), t.c.reminded_at.is_(None), t.c.due_at.is_not(None),
                   t.c.due_at <= now + ahead).order_by(t.c.due_at).limit(500)
            # Several CRM processes may run the clock: each activity is taken by one.
            .with_for_update(skip_locked=True, of=t))
        for row in rows.mappings():
            due = business_day.local_text(row["due_at"], "%Y-%m-%d %H:%M %Z")  # the company's clock, named
            text = f"{row['kind']} «{row['subject'][:200]}» due {due}"
            await uow.notifications.add(user_id=row["owner_id"], kind="activity_due", text=text,
                                        approval_request_id=None, at=now)
            await uow.session.execute(update(t).where(t.c.id == row["id"]).values(reminded_at=now))
            sent.append({"activity_id": row["id"], "user_id": row["owner_id"], "hook": row["notify_hook"],
                         "text": text})
        await uow.commit()
    return sent


# --- the organization card -----------------------------------------------------------------


async def approvals_of(uow: CrmUnitOfWork, *, organization_id: str | None = None, deal_id: str | None = None,
                       owned_by: str | None = None, open_only: bool = False,
                       unanswered_after: timedelta) -> list[dict]:
    """Each document sent for approval (of the organization, of the deal, or of the deals
    `owned_by` someone; only those still open with `open_only`) with its status as the ECM
    reports it, and whether the ECM has reported nothing about it for `unanswered_after`
    (domain.model.unanswered)."""
    a, d, dl = tables.approval_requests, tables.documents, tables.deals
    query = (select(a, d.c.filename, d.c.doc_type, dl.c.title.label("deal_title"))
             .join(d, d.c.id == a.c.document_id).join(dl, dl.c.id == a.c.deal_id))
    if organization_id:
        query = query.where(a.c.organization_id == organization_id)
    elif deal_id:
        query = query.where(a.c.deal_id == deal_id)
    elif owned_by:
        query = query.where(dl.c.owner_id == owned_by)
    else:
        raise ValueError("approvals of what: an organization, a deal or an owner")
    if open_only:
        query = query.where(a.c.status.not_in(CLOSED_REQUEST_STATUSES))
    rows = await uow.session.execute(query.order_by(a.c.requested_at.desc()))
    now = datetime.now(timezone.utc)
    return [{**r, "unanswered": unanswered(status=r["status"], revision=r["revision"], requested_at=r["requested_at"],
                                           now=now, after=unanswered_after)} for r in rows.mappings()]


async def documents_of(uow: CrmUnitOfWork, deal_id: str, *, unanswered_after: timedelta) -> list[dict]:
    """The deal's documents, newest first, each with its latest approval request as the
    ECM reports it (None if never sent) and whether it may be sent now (no request of it
    is still open)."""
    d = tables.documents
    rows = await uow.session.execute(
        select(d.c.id, d.c.deal_id, d.c.filename, d.c.content_type, d.c.doc_type, d.c.size, d.c.sha256,
               d.c.created_at, d.c.version_no).where(d.c.deal_id == deal_id).order_by(d.c.created_at.desc(), d.c.id))
    latest: dict[str, dict] = {}
    for approval in await approvals_of(uow, deal_id=deal_id, unanswered_after=unanswered_after):  # newest first
        latest.setdefault(approval["document_id"], approval)
    out = []
    for row in rows.mappings():
        approval = latest.get(row["id"])
        out.append({**row, "approval": approval,
                    "may_request": approval is None or approval["status"] in CLOSED_REQUEST_STATUSES})
    return out


async def set_notify_hook(uow: CrmUnitOfWork, *, user_id: str, hook: str | None) -> None:
    """Where the user's reminders go besides the CRM: a chat webhook or mailto:; None stops it."""
    p = tables.user_profiles
    async with uow:
        exists = (await uow.session.execute(select(p.c.user_id).where(p.c.user_id == user_id))).first()
        if exists:
            await uow.session.execute(update(p).where(p.c.user_id == user_id).values(notify_hook=hook))
        else:
            await uow.session.execute(p.insert().values(user_id=user_id, notify_hook=hook))
        await uow.commit()


async def notify_hook_of(uow: CrmUnitOfWork, user_id: str) -> str | None:
    p = tables.user_profiles
    return (await uow.session.execute(select(p.c.notify_hook).where(p.c.user_id == user_id))).scalar()


def link_text(org: Organization) -> str:
    """The registry's word on the organization, for sales, as a sentence."""
    if not org.registry_status:
        return "not yet in the registry"
    if org.registry_status == "linked":
        return f"verified in the registry as {org.registry_name}"
    return {"pending_verification": "in the registry, awaiting verification",
            "rejected": "rejected by the registry", "merged": "merged in the registry",
            "archived": "archived in the registry"}.get(org.registry_status, org.registry_status)


async def timeline(uow: CrmUnitOfWork, organization_id: str) -> list[dict]:
    """Relationship history, activities, deal stages, documents and their versions, and
    approval statuses, newest first."""
    entries = [{"at": h["at"], "kind": h["kind"], "text": _history_text(h), "actor_id": h["actor_id"]}
               for h in await uow.organizations.history(organization_id)]
    t = tables.activities
    for row in (await uow.session.execute(select(t).where(t.c.organization_id == organization_id))).mappings():
        entries.append({"at": row["done_at"] or row["due_at"] or row["created_at"], "kind": f"activity:{row['kind']}",
                        "text": row["subject"] + (" (done)" if row["done_at"] else ""), "actor_id": row["owner_id"]})
    h, dl = tables.deal_stage_history, tables.deals
    stages = await uow.session.execute(
        select(h, dl.c.title).join(dl, dl.c.id == h.c.deal_id).where(dl.c.organization_id == organization_id))
    for row in stages.mappings():
        text = f"deal «{row['title']}»: " + (f"{row['from_stage']} → {row['to_stage']}" if row["from_stage"]
                                              else f"created at {row['to_stage']}")
        entries.append({"at": row["at"], "kind": "deal_stage", "text": text, "actor_id": row["actor_id"]})
    d, v = tables.documents, tables.document_versions
    deal_documents = d.join(dl, dl.c.id == d.c.deal_id)
    for f, source in ((d, deal_documents), (v, v.join(deal_documents, d.c.id == v.c.document_id))):
        rows = await uow.session.execute(
            select(f.c.filename, f.c.version_no, f.c.uploaded_by, f.c.created_at, dl.c.title)
            .select_from(source).where(dl.c.organization_id == organization_id))
        for row in rows.mappings():
            text = (f"deal «{row['title']}»: {row['filename']} attached" if row["version_no"] == 1
                    else f"deal «{row['title']}»: {row['filename']}, version {row['version_no']}")
            entries.append({"at": row["created_at"], "kind": "document", "text": text, "actor_id": row["uploaded_by"]})
    s, a = tables.approval_status_history, tables.approval_requests
    statuses = await uow.session.execute(
        select(s, d.c.filename).join(a, a.c.id == s.c.approval_request_id).join(d, d.c.id == a.c.document_id)
        .where(a.c.organization_id == organization_id))
    for row in statuses.mappings():
        stage = f", stage {row['stage']}" if row["stage"] else ""
        entries.append({"at": row["changed_at"] or row["applied_at"], "kind": "approval",
                        "text": f"{row['filename']}: {row['status'].replace('_', ' ')}{stage}", "actor_id": None})
    return sorted(entries, key=lambda e: e["at"], reverse=True)


def _history_text(h: dict) -> str:
    detail = h["detail"] or {}
    if h["kind"] == "responsibility_transferred":
        return "responsibility transferred"
    if h["kind"] == "edited":
        return "edited: " + ", ".join(detail.get("fields", []))
    if h["kind"] == "merged":
        return f"merged with «{detail.get('name')}»"
    if h["kind"] == "filled_from_registry":
        return "filled from the registry: " + ", ".join(detail.get("fields", []))
    return h["kind"].replace("_", " ")


def organization_view(org: Organization) -> dict:
    view = asdict(org)
    view["hints"] = identifier_hints(inn=org.inn, kpp=org.kpp, ogrn=org.ogrn)
    view["link_text"] = link_text(org)
    return view


# --- documents from templates --------------------------------------------------------------


def list_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.html"))


def render_template(name: str, *, org: Organization, deal: Deal, author: str) -> bytes:
    if name not in list_templates():
        raise InvalidRequest(f"unknown template {name!r}; available: {', '.join(list_templates())}")
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined)
    html = env.get_template(f"{name}.html").render(
        org=org, deal=deal, author=author, today=business_day.today(),
        amount=f"{deal.amount:,.2f}".replace(",", " ") if isinstance(deal.amount, Decimal) else None)
    return html.encode("utf-8")


async def generate_document(uow: CrmUnitOfWork, files, *, actor: Actor, user_name: str, deal_id: str,
                            template: str, doc_type: str, max_bytes: int):
    """Fills a template with the deal's and the organization's fields and attaches the
    result to the deal as an HTML document (the caller may then request approval)."""
    from crm_service.service_layer.handlers import attach_document

    async with uow:
        deal = await uow.deals.get(deal_id)
        if deal is None:
            raise NotFound(f"deal {deal_id} not found")
        await check_owned(uow, actor, deal.owner_id, "deal")
        org = await uow.organizations.get(deal.organization_id)
    content = render_template(template, org=org, deal=deal, author=user_name)
    # off the event loop: the store fsyncs the file and its directory
    sha, size = await asyncio.to_thread(files.put, io.BytesIO(content), max_bytes=max_bytes)
    return await attach_document(uow, user_id=actor.id, deal_id=deal_id, filename=f"{template}-{deal_id[:8]}.html",
                                 content_type="text/html; charset=utf-8", doc_type=doc_type, sha256=sha, size=size)

