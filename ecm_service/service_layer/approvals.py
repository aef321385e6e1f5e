"""Starting approvals on the route for the document type, and deciding on them."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from ecm_service.domain.approval import Approval, Route, start_steps
from ecm_service.domain.routes import route_for
from ecm_service.service_layer.registry import COUNTERPARTY, SOURCE
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra.retrying import PermanentError
from schemas import ecm_commands, ecm_events
from schemas.common import ExternalRef
from schemas.envelope import Envelope, new_envelope
from schemas.topics import ECM_EVENTS

APPROVAL = "approval"


class NotFound(Exception):
    pass


async def start_approval(
    uow: EcmUnitOfWork, cmd: ecm_commands.StartApprovalV1, envelope: Envelope, routes: dict[str, Route]
) -> dict:
    existing = await uow.external_refs.find(APPROVAL, cmd.external_ref)
    if existing:  # the same request arriving under another command id
        return {"approval_id": existing, "duplicate": True}
    version = await uow.documents.version(cmd.document_version_id)
    if version is None or version["document_id"] != cmd.document_id:
        raise PermanentError(f"document version {cmd.document_version_id} not found")
    if version["sha256"] != cmd.sha256:
        raise PermanentError("document version content hash differs from the requested one")
    now = datetime.now(timezone.utc)
    route = route_for(routes, cmd.doc_type)
    approval_id = str(uuid.uuid4())
    approval = Approval(
        id=approval_id, document_id=cmd.document_id, document_version_id=cmd.document_version_id,
        document_sha256=cmd.sha256, doc_type=cmd.doc_type, title=cmd.title,
        route_doc_type=route.doc_type, route_version=route.version,
        initiator_ref=cmd.initiator_ref.as_text(), correlation_id=envelope.correlation_id,
        created_at=now, updated_at=now,
        counterparty_id=await uow.external_refs.find(COUNTERPARTY, cmd.counterparty_ref),
        counterparty_ref=cmd.counterparty_ref.as_text(),
        steps=start_steps(approval_id, route, lambda: str(uuid.uuid4())),
    )
    await uow.approvals.add(approval)
    await uow.external_refs.attach(APPROVAL, approval.id, cmd.external_ref)
    await uow.history.append(
        entity_type=APPROVAL, entity_id=approval.id, action="started", actor=cmd.initiator_ref.as_text(),
        data={"route": [route.doc_type, route.version], "document_version_id": cmd.document_version_id,
              "sha256": cmd.sha256, "external_ref": cmd.external_ref.as_text()})
    await publish_status(uow, approval, causation_id=envelope.event_id)
    return {"approval_id": approval.id}


async def decide(
    uow: EcmUnitOfWork, *, approval_id: str, user_id: str, role: str, decision: str,
    comment: str | None, reason: str | None,
) -> Approval:
    async with uow:
        approval = await uow.approvals.get(approval_id, for_update=True)
        if approval is None:
            raise NotFound(f"approval {approval_id} not found")
        step = approval.decide(user_id=user_id, role=role, decision=decision, comment=comment, reason=reason,
                               at=datetime.now(timezone.utc))
        await uow.approvals.save(approval)
        await uow.history.append(
            entity_type=APPROVAL, entity_id=approval.id, action="decided", actor=f"user:{user_id}",
            reason=reason, data={"stage": step.name, "role": role, "decision": decision, "comment": comment,
                                 "sha256": approval.document_sha256, "status": approval.status})
        await publish_status(uow, approval, causation_id=None)
        await uow.commit()
    return approval


async def reassign_initiator(uow: EcmUnitOfWork, cmd: ecm_commands.ReassignInitiatorV1, envelope: Envelope) -> dict:
    """Responsibility moved on the requesting side: in-flight approvals started for that
    counterparty follow the new manager; finished ones keep their history as it was."""
    moved = []
    for approval_id in await uow.approvals.in_flight_for_counterparty_ref(cmd.counterparty_ref.as_text()):
        approval = await uow.approvals.get(approval_id, for_update=True)
        previous = approval.initiator_ref
        if previous == cmd.new_initiator_ref.as_text():
            continue
        approval.initiator_ref = cmd.new_initiator_ref.as_text()
        approval.revision += 1
        approval.updated_at = datetime.now(timezone.utc)
        await uow.approvals.save(approval)
        await uow.history.append(
            entity_type=APPROVAL, entity_id=approval.id, action="initiator_changed", at=cmd.reassigned_at,
            actor=cmd.reassigned_by_ref.as_text(), data={"from": previous, "to": approval.initiator_ref},
        )
        await publish_status(uow, approval, causation_id=envelope.event_id)
        moved.append(approval.id)
    return {"reassigned": moved}


async def publish_status(uow: EcmUnitOfWork, approval: Approval, *, causation_id) -> None:
    step = approval.current_step
    event = ecm_events.ApprovalStatusChangedV1(
        approval_id=approval.id,
        external_refs=await uow.external_refs.refs_of(APPROVAL, approval.id),
        counterparty_ref=_ref(approval.counterparty_ref),
        status=approval.status, stage=step.name if step else None, stage_no=approval.current_stage_no,
        revision=approval.revision, reason=approval.reason, document_sha256=approval.document_sha256,
        initiator_ref=_ref(approval.initiator_ref),
    )
    await uow.publish(
        ECM_EVENTS, approval.counterparty_id or approval.id,
        # The approval keeps the correlation id of the request that started it, so the
        # decisions made days later still trace back to that request.
        new_envelope(type=ecm_events.APPROVAL_STATUS_CHANGED, schema_version=1, source=SOURCE, payload=event,
                     correlation_id=approval.correlation_id, causation_id=causation_id),
    )


def _ref(text: str | None) -> ExternalRef | None:
    return ExternalRef.parse(text) if text else None
