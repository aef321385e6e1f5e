"""CRM use cases. Nothing here can fail because of the ECM: approval requests are
recorded and announced through the outbox, and answered later by commands."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from crm_service.adapters import tables
from crm_service.domain.model import (
    CLOSED_REQUEST_STATUSES,
    RETURNED,
    ApprovalRequest,
    Deal,
    Document,
    Organization,
    opening_stage,
)
from crm_service.domain.rights import Actor, check_may_change, check_may_transfer, may_change
from crm_service.service_layer.unit_of_work import CrmUnitOfWork
from infra.retrying import rerun_on_conflict
from schemas import crm_commands, crm_events
from schemas.envelope import new_envelope
from schemas.topics import CRM_EVENTS

SOURCE = "crm"


class NotFound(Exception):
    pass


class InvalidRequest(Exception):
    pass


class Conflict(Exception):
    """The document's approval is where the request cannot go (the API's 409)."""


class ReturnedForChanges(Conflict):
    """Approval asked again of a document the ECM returned for changes: its approval
    waits for a new version, not for a second request."""


class EarlierVersion(Conflict):
    """A new version whose file is one of the document's earlier versions while its
    approval is with the ECM: the approval has had those bytes already and would not move
    back to them, so the CRM would show a file the ECM is not deciding on."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return str(uuid.uuid4())


async def create_organization(uow: CrmUnitOfWork, *, user_id: str, name: str, **fields) -> Organization:
    org = Organization(id=_new_id(), name=name, created_by=user_id, owner_id=user_id, created_at=_now(), **fields)
    org.refresh_name_key()
    async with uow:
        await uow.organizations.add(org)
        await uow.commit()
    return org


async def create_deal(uow: CrmUnitOfWork, *, user_id: str, organization_id: str, title: str, funnel: dict,
                      **fields) -> Deal:
    """A deal at the configured funnel's first stage, with that stage's probability
    unless one is given; for a merged organization, on the one it was merged into."""
    stage, probability = opening_stage(funnel)
    if fields.get("probability") is None:
        fields["probability"] = probability
    deal = Deal(id=_new_id(), organization_id=organization_id, title=title, owner_id=user_id, created_at=_now(),
                stage=stage, **fields)
    async with uow:
        if (org := await uow.organizations.live(organization_id)) is None:
            raise NotFound(f"organization {organization_id} not found")
        deal.organization_id = org.id
        await uow.deals.add(deal)
        await uow.session.execute(tables.deal_stage_history.insert().values(
            deal_id=deal.id, from_stage=None, to_stage=deal.stage, actor_id=user_id, at=deal.created_at))
        await uow.commit()
    return deal


async def attach_document(
    uow: CrmUnitOfWork, *, user_id: str, deal_id: str, filename: str, content_type: str,
    doc_type: str, sha256: str, size: int,
) -> Document:
    doc = Document(
        id=_new_id(), deal_id=deal_id, filename=filename, content_type=content_type, doc_type=doc_type,
        size=size, sha256=sha256, uploaded_by=user_id, created_at=_now(),
    )
    async with uow:
        if await uow.deals.get(deal_id) is None:
            raise NotFound(f"deal {deal_id} not found")
        await uow.documents.add(doc)
        await uow.commit()
    return doc


async def actor_for(uow: CrmUnitOfWork, user) -> Actor:
    return Actor(id=user.id, role=user.role, team=await uow.team_of(user.id))


async def check_owned(uow: CrmUnitOfWork, actor: Actor, owner_id: str | None, what: str) -> None:
    """NotAllowed unless the actor may change what `owner_id` owns (the owner's team is
    looked up only when the owner is someone else)."""
    owner_team = actor.team if owner_id == actor.id else await uow.team_of(owner_id)
    check_may_change(actor, owner_id, owner_team, what)


async def check_caller_may_change(uow: CrmUnitOfWork, caller, owner_id: str | None, what: str) -> None:
    """`check_owned` for an API caller: the teams are looked up only when they could
    decide (not for an admin, nor for the owner themself, the common case)."""
    if may_change(Actor(id=caller.id, role=caller.role), owner_id, None):
        return
    await check_owned(uow, await actor_for(uow, caller), owner_id, what)


async def _lock_document(uow: CrmUnitOfWork, caller, deal_id: str, document_id: str):
    """(document, deal, organization), the document's row locked; NotFound saying what
    is missing in the order a caller would fix it, NotAllowed (with `caller`) unless the
    caller may change the deal."""
    found = await uow.documents.lock_in_context(document_id, deal_id)
    if found is None:
        deal = await uow.deals.get(deal_id)
        if deal is None:
            raise NotFound(f"deal {deal_id} not found")
        if caller is not None:
            await check_caller_may_change(uow, caller, deal.owner_id, "deal")
        raise NotFound(f"document {document_id} not found on deal {deal_id}")
    if caller is not None:
        await check_caller_may_change(uow, caller, found[1].owner_id, "deal")
    return found


async def request_approval(
    uow: CrmUnitOfWork, *, user_id: str, deal_id: str, document_id: str, correlation_id: str,
    caller=None,
) -> ApprovalRequest:
    """Records the request and its event in one transaction. The organization travels
    as it is (partial, unchecked): the ECM reconciles, the rep is never asked. Asking
    again for a document whose approval is still open answers with that request (a
    double click, or a client resending after a lost answer, starts nothing new).

    With `caller` (the API's user) the caller must be allowed to change the deal (its
    owner, their team's manager, an admin; NotAllowed otherwise), checked in the same
    transaction."""
    async with uow:
        # Five statements in all (with BEGIN and COMMIT): each is a wait, and under load an
        # await takes tens of milliseconds to come back (bench/RESULTS.md, ADR 0012).
        doc, deal, org = await _lock_document(uow, caller, deal_id, document_id)
        request = ApprovalRequest(
            id=_new_id(), deal_id=deal_id, document_id=document_id, organization_id=org.id,
            requested_by=user_id, requested_at=_now(),
        )
        event = crm_events.ApprovalRequestedV2(
            approval_request_id=request.id,
            requested_at=request.requested_at,
            requested_by=user_id,
            organization=crm_events.OrganizationSnapshotV2(
                id=org.id, name=org.name, inn=org.inn, kpp=org.kpp, ogrn=org.ogrn,
                legal_form=org.legal_form, country=org.country, addresses=org.addresses,
            ),
            deal=crm_events.DealRef(id=deal.id, title=deal.title),
            document=crm_events.DocumentRef(
                id=doc.id, filename=doc.filename, content_type=doc.content_type, doc_type=doc.doc_type,
                sha256=doc.sha256, size=doc.size,
            ),
        )
        envelope = new_envelope(type=crm_events.APPROVAL_REQUESTED, schema_version=2, source=SOURCE,
                                payload=event, correlation_id=correlation_id)
        request.request_event_id = str(envelope.event_id)
        if not await uow.approval_requests.add_unless_open(request):
            # still open (a double click, a resend): that request is the answer
            still_open = await uow.approval_requests.open_for_document(document_id)
            if still_open.status == RETURNED:
                raise ReturnedForChanges(
                    f"the ECM returned document {document_id} for changes"
                    + (f" ({still_open.reason})" if still_open.reason else "")
                    + ": send a new version of it and its approval goes on")
            return still_open
        await uow.publish(CRM_EVENTS, org.id, envelope)
        await uow.commit()
    return request


@rerun_on_conflict
async def add_document_version(
    uow: CrmUnitOfWork, *, user_id: str, deal_id: str, document_id: str, filename: str, content_type: str,
    sha256: str, size: int, correlation_id: str, caller=None,
) -> tuple[Document, ApprovalRequest | None, bool]:
    """A new file for a deal document (the one the ECM returned for changes, say).
    Returns (document, the request the version went to, created). The earlier version is
    kept. When the document's approval is with the ECM (under way or returned) the new
    version is announced, in the same transaction, and the ECM moves that approval to
    it: nobody sends anything twice. The same file again changes nothing; an earlier
    version's file while the approval is with the ECM is refused (EarlierVersion)."""
    async with uow:
        doc, deal, org = await _lock_document(uow, caller, deal_id, document_id)
        # The approval the version goes to, looked up once (none for the same file again).
        request = await uow.approval_requests.open_for_document(document_id) if sha256 != doc.sha256 else None
        if request is not None and (earlier := await uow.documents.earlier_version_with(document_id, sha256)):
            raise EarlierVersion(
                f"this file is version {earlier} of the document, which its approval has had already "
                f"({request.status.replace('_', ' ')}); attach the corrected file")
        at = _now()
        previous = doc.replace_file(filename=filename, content_type=content_type, size=size, sha256=sha256,
                                    by=user_id, at=at)
        if previous is None:
            return doc, None, False
        await uow.documents.keep_version(previous)
        await uow.documents.save(doc)
        if request is not None:
            event = crm_events.DocumentVersionAddedV1(
                approval_request_id=request.id, organization_id=org.id,
                deal=crm_events.DealRef(id=deal.id, title=deal.title),
                document=crm_events.DocumentRef(id=doc.id, filename=doc.filename, content_type=doc.content_type,
                                                doc_type=doc.doc_type, sha256=doc.sha256, size=doc.size),
                version_no=doc.version_no, added_by=user_id, added_at=at)
            await uow.publish(CRM_EVENTS, org.id, new_envelope(
                type=crm_events.DOCUMENT_VERSION_ADDED, schema_version=1, source=SOURCE, payload=event,
                correlation_id=correlation_id))
        await uow.commit()
    return doc, request, True


async def withdraw_approval_request(
    uow: CrmUnitOfWork, *, user_id: str, request_id: str, reason: str, correlation_id: str, caller=None,
) -> ApprovalRequest:
    """The rep takes an approval request back (the deal fell through, the wrong file went):
    the request is `withdrawn` at once, and its event, in the same transaction, has the
    ECM close the approval. One already approved, rejected or withdrawn is a Conflict.
    With `caller`, only who may change the deal may withdraw its request."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("say why the request is withdrawn: the approvers see the reason")
    async with uow:
        request = await uow.approval_requests.get(request_id, for_update=True)
        if request is None:
            raise NotFound(f"approval request {request_id} not found")
        deal = await uow.deals.get(request.deal_id)
        if caller is not None:
            await check_caller_may_change(uow, caller, deal.owner_id, "deal")
        if request.status in CLOSED_REQUEST_STATUSES:
            raise Conflict(f"approval request {request_id} is {request.status.replace('_', ' ')} already; "
                           "there is nothing to withdraw")
        at = _now()
        request.withdraw(reason=reason, at=at)
        await uow.approval_requests.save(request)
        envelope = new_envelope(
            type=crm_events.APPROVAL_WITHDRAWN, schema_version=1, source=SOURCE, correlation_id=correlation_id,
            payload=crm_events.ApprovalWithdrawnV1(approval_request_id=request.id,
                                                   organization_id=request.organization_id, withdrawn_by=user_id,
                                                   withdrawn_at=at, reason=reason))
        await uow.approval_requests.record_status(request, str(envelope.event_id))
        await uow.publish(CRM_EVENTS, request.organization_id, envelope)
        await uow.commit()
    return request


async def transfer_responsibility(
    uow: CrmUnitOfWork, *, actor_id: str, actor_role: str, organization_id: str, new_owner_id: str,
    move_open_deals: bool, correlation_id: str, closed_stages, move_open_activities: bool = False,
) -> dict:
    """Hands an organization (and, if asked, its open deals and open activities) to
    another manager. The ECM hears of it through the outbox and moves in-flight
    approvals along. A merged organization (a page opened before the merge) hands over
    the one it was merged into, which now holds its deals and approvals; before, the
    pointer changed hands and nothing else did, in either system."""
    async with uow:
        org = await uow.organizations.live(organization_id, for_update=True)
        if org is None:
            raise NotFound(f"organization {organization_id} not found")
        previous = org.owner_id or org.created_by
        if await uow.user_role(new_owner_id) is None:
            raise InvalidRequest(f"user {new_owner_id} does not exist")
        actor = Actor(id=actor_id, role=actor_role, team=await uow.team_of(actor_id))
        check_may_transfer(actor, owner_id=previous, owner_team=await uow.team_of(previous),
                           new_owner_team=await uow.team_of(new_owner_id),
                           new_owner_role=await uow.user_role(new_owner_id))
        at = _now()
        org.owner_id = new_owner_id
        await uow.organizations.save(org)
        moved = await uow.deals.move_open_deals(org.id, new_owner_id, closed_stages) if move_open_deals else []
        moved_activities = await uow.activities.move_open(org.id, moved, new_owner_id) \
            if move_open_activities else []
        await uow.organizations.add_history(
            org.id, at=at, kind="responsibility_transferred", actor_id=actor_id,
            detail={"from": previous, "to": new_owner_id, "moved_deal_ids": moved,
                    "moved_activity_ids": moved_activities})
        event = crm_events.ResponsibilityTransferredV1(
            organization_id=org.id, previous_owner_id=previous, new_owner_id=new_owner_id,
            transferred_by=actor_id, transferred_at=at, moved_deal_ids=moved)
        await uow.publish(CRM_EVENTS, org.id, new_envelope(
            type=crm_events.RESPONSIBILITY_TRANSFERRED, schema_version=1, source=SOURCE, payload=event,
            correlation_id=correlation_id))
        await uow.commit()
    return {"organization_id": org.id, "previous_owner_id": previous, "new_owner_id": new_owner_id,
            "moved_deal_ids": moved, "moved_activity_ids": moved_activities, "transferred_at": at}


async def update_approval_status(
    uow: CrmUnitOfWork, cmd: crm_commands.UpdateApprovalStatusV3, command_id: str
) -> bool:
    request = await uow.approval_requests.get(cmd.approval_request_id, for_update=True)
    if request is None:
        return False
    changed = request.apply_status(
        status=cmd.status, stage=cmd.stage, revision=cmd.revision, reason=cmd.reason,
        registry_approval_id=cmd.registry_approval_id, at=_now(), due_at=cmd.due_at, overdue=cmd.overdue,
        delay_reason_code=cmd.delay_reason_code,
    )
    if changed:
        uow.approval_requests.save_later(request)  # with the batch's others, before the commit
        await uow.approval_requests.record_status(request, command_id, cmd.changed_at)
        # Not the rep who withdrew it: they know (a manager who withdrew a rep's request
        # leaves the rep a notification).
        if cmd.notify_user_id and cmd.notify_user_id != cmd.withdrawn_by:
            stage = f" ({request.stage})" if request.stage else ""
            await uow.notifications.add(
                user_id=cmd.notify_user_id, kind="approval_status", approval_request_id=request.id, at=_now(),
                text=f"Approval {request.status.replace('_', ' ')}{stage}"
                     + (f": {request.reason}" if request.reason else ""))
    return changed


async def update_organization_link(
    uow: CrmUnitOfWork, cmd: crm_commands.UpdateOrganizationLinkV2, command_id: str
) -> bool:
    org = await uow.organizations.get(cmd.organization_id, for_update=True)
    if org is None:
        return False
    before = {key: getattr(org, key) for key in ("inn", "kpp", "ogrn")}
    changed = org.apply_registry_link(registry_id=cmd.registry_id, status=cmd.link_status, name=cmd.registry_name,
                                      seq=cmd.registry_seq, ids={"inn": cmd.registry_inn, "kpp": cmd.registry_kpp,
                                                                 "ogrn": cmd.registry_ogrn})
    if changed:
        uow.organizations.save_later(org)
        filled = sorted(key for key, value in before.items() if getattr(org, key) != value)
        if filled:
            await uow.organizations.add_history(org.id, at=_now(), kind="filled_from_registry", actor_id="registry",
                                                detail={"fields": filled, "registry_id": org.registry_id})
    return changed


COMMAND_HANDLERS = {
    crm_commands.UPDATE_APPROVAL_STATUS: update_approval_status,
    crm_commands.UPDATE_ORGANIZATION_LINK: update_organization_link,
}
ACCEPTED_COMMANDS = frozenset(COMMAND_HANDLERS)


async def apply_command(uow: CrmUnitOfWork, message, topic: str) -> None:
    """Applies a command once: the inbox mark commits with the effect."""
    await apply_commands(uow, [message], topic)


async def apply_commands(uow: CrmUnitOfWork, messages: list, topic: str) -> None:
    """Commands of one consumed batch, in order, in one transaction, each once. If one
    fails, none is applied (the consumer then applies them one by one)."""
    async def handle(message) -> dict:
        envelope = message.envelope
        return {"changed": await COMMAND_HANDLERS[envelope.type](uow, message.payload, str(envelope.event_id))}

    async with uow:
        if len(messages) > 1:  # the rows the commands change, locked and read once for all
            of_type = lambda type_: [m.payload for m in messages if m.envelope.type == type_]  # noqa: E731
            await uow.approval_requests.lock_many(
                p.approval_request_id for p in of_type(crm_commands.UPDATE_APPROVAL_STATUS))
            await uow.organizations.lock_many(p.organization_id for p in of_type(crm_commands.UPDATE_ORGANIZATION_LINK))
        await uow.apply_once(messages, topic, handle)
        await uow.commit()


async def trace_approval_request(uow: CrmUnitOfWork, request_id: str) -> dict:
    """Where is approval request X: each hop the CRM can see, with its time."""
    async with uow:
        request = await uow.approval_requests.get(request_id)
        if request is None:
            raise NotFound(f"approval request {request_id} not found")
        held, published_at = (await uow.outbox_event(request.request_event_id) if request.request_event_id
                              else (False, None))
        history = await uow.approval_requests.status_history(request_id)
    hops = [{"hop": "crm.requested", "at": request.requested_at}]
    published = {"hop": "crm.event_published", "at": published_at, "event_id": request.request_event_id}
    if request.request_event_id and not held:
        published["note"] = "the outbox row was pruned after CRM_OUTBOX_KEEP_DAYS; its time is no longer known"
    hops.append(published)
    for h in history:
        detail = {"status": h["status"], "stage": h["stage"], "revision": h["revision"]}
        if h["status"] == "withdrawn" and h["changed_at"] is None:  # the rep's own, in the CRM
            hops.append({"hop": "crm.withdrawn", "at": h["applied_at"], **detail})
            continue
        if h["changed_at"] is not None:
            hops.append({"hop": "ecm.status_changed", "at": h["changed_at"], **detail})
        hops.append({"hop": "crm.status_received", "at": h["applied_at"], **detail})
    return {"id": request.id, "status": request.status, "stage": request.stage,
            "registry_approval_id": request.registry_approval_id, "hops": hops}
