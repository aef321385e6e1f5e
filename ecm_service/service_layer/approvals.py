"""Approvals: starting them on the current route version, deciding (also as a deputy or
through escalation), re-opening on a new document version, waiting for a verified
counterparty, the deadline clock, delay reasons, and the public events about all of it."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import structlog

from ecm_service.domain.approval import (
    AWAITING_COUNTERPARTY,
    Actor,
    Approval,
    Route,
)
from ecm_service.domain.counterparty import VERIFIED
from ecm_service.domain.document_types import DocumentType, policy_for
from ecm_service.domain.routes import FALLBACK, parse_route
from ecm_service.service_layer.registry import COUNTERPARTY, SOURCE
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra import business_day
from infra.retrying import PermanentError, rerun_on_conflict
from schemas import ecm_commands, ecm_events
from schemas.common import ExternalRef
from schemas.envelope import Envelope, new_envelope
from schemas.registry import LATEST
from schemas.topics import ECM_EVENTS

APPROVAL = "approval"
log = structlog.get_logger()


class NotFound(Exception):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- route versions ---------------------------------------------------------------------


@rerun_on_conflict
async def sync_routes_from_file(uow: EcmUnitOfWork, file_routes: dict[str, Route], *, at: datetime) -> list[str]:
    """At startup: a route whose file definition changed since the file last seeded it
    becomes a new version. Versions made through the admin API are not overwritten by an
    unchanged file. Replicas starting at once: the later insert breaks the version's key,
    and that replica's sync runs again and finds the file's routes already there. The new
    version's number comes from a read made before the file's version is looked up: on
    SQLite the insert waits for the other replica's commit, and a number read only then
    followed it (a second, identical version: 3 runs in 40 of the replicas' test)."""
    added = []
    async with uow:
        for doc_type, route in file_routes.items():
            await uow.routes.latest(doc_type)  # remembered for `add`
            seeded = await uow.routes.latest_from(doc_type, "file")
            if seeded is None or seeded["spec"] != route.spec():
                version = await uow.routes.add(doc_type, route.spec(), source="file", created_by="routes-file", at=at)
                await uow.history.append(entity_type="route", entity_id=doc_type[:36], action="version_added",
                                         actor="system:routes-file", data={"version": version, "spec": route.spec()})
                added.append(f"{doc_type} v{version}")
        await uow.commit()
    return added


async def current_route(uow: EcmUnitOfWork, doc_type: str, file_routes: dict[str, Route]) -> Route:
    """The latest version for the document type, else the fallback route's."""
    for name in (doc_type, FALLBACK):
        stored = await uow.routes.latest(name)
        if stored:
            return parse_route(name, stored["spec"], stored["version"])
    # Nothing stored yet (the startup sync has not run): seed from the file.
    route = file_routes.get(doc_type) or file_routes[FALLBACK]
    version = await uow.routes.add(route.doc_type, route.spec(), source="file", created_by="routes-file", at=_now())
    return parse_route(route.doc_type, route.spec(), version)


@rerun_on_conflict
async def change_route(uow: EcmUnitOfWork, *, doc_type: str, spec: dict, user) -> Route:
    """Admin API: a new version. Approvals in flight keep the version they started on. Two
    changes at once both read the same latest version; the later insert breaks the
    version's key and runs again on the one the other committed."""
    route = parse_route(doc_type, spec)
    async with uow:
        version = await uow.routes.add(doc_type, route.spec(), source="api", created_by=f"user:{user.id}", at=_now())
        await uow.history.append(entity_type="route", entity_id=doc_type[:36], action="version_added",
                                 actor=f"user:{user.id}", data={"version": version, "spec": route.spec()})
        await uow.commit()
    return parse_route(doc_type, route.spec(), version)


# --- starting ---------------------------------------------------------------------------


async def counterparty_is_verified(uow: EcmUnitOfWork, counterparty_id: str | None) -> bool:
    if not counterparty_id:
        return False
    return await uow.counterparties.status_of(counterparty_id) == VERIFIED


async def verified_meanwhile(uow: EcmUnitOfWork, counterparty_id: str | None) -> bool:
    """A new approval is about to wait for its counterparty: its status is read again
    under the record's lock. A steward's verification committing in between is seen here;
    one that comes after waits for this transaction, and its `resume_waiting` then finds
    the waiting approval. Without it, a start and a verification at the same moment both
    missed each other (the start read `pending`, the verification found nothing waiting),
    and the approval waited for good. Only waiting starts pay for the lock, a key-share
    one as a link's (`registry.link_target`): the steward's actions lock `FOR UPDATE`."""
    if not counterparty_id:
        return False
    record = await uow.counterparties.get_key_shared(counterparty_id)
    return record is not None and record.status == VERIFIED


async def start_approval(
    uow: EcmUnitOfWork, cmd: ecm_commands.StartApprovalV1, envelope: Envelope, routes: dict[str, Route],
    doc_types: dict[str, DocumentType],
) -> dict:
    existing = await uow.external_refs.find(APPROVAL, cmd.external_ref)
    if existing:  # the same request arriving under another command id
        return {"approval_id": existing, "duplicate": True}
    version, latest = await uow.documents.version_and_latest(cmd.document_id, cmd.document_version_id)
    if version is None:
        raise PermanentError(f"document version {cmd.document_version_id} not found")
    if version["sha256"] != cmd.sha256:
        raise PermanentError("document version content hash differs from the requested one")
    requested_version_id = None
    if latest["id"] != version["id"]:
        # The rep sent a new version before this approval started (it travelled behind
        # the request): the approval is of the document as it now is.
        requested_version_id, version = version["id"], latest
    now = _now()
    route = await current_route(uow, cmd.doc_type, routes)
    counterparty_ref, named = cmd.counterparty_ref, {}
    counterparty_id = await uow.external_refs.find(COUNTERPARTY, counterparty_ref)
    if counterparty_id is None and (survivor := await uow.external_refs.survivor_of(
            COUNTERPARTY, counterparty_ref)) is not None:
        # An organization the CRM merged away since (a replayed dead letter): the approval
        # is for the one the merge left, as a merge renames the approvals started before it.
        counterparty_ref, named = survivor, {"named_counterparty_ref": counterparty_ref.as_text()}
        counterparty_id = await uow.external_refs.find(COUNTERPARTY, counterparty_ref)
    approval_id = str(uuid.uuid4())

    def begin(counterparty_verified: bool) -> Approval:
        return Approval.start(
            route=route, at=now, counterparty_verified=counterparty_verified,
            needs_verified_counterparty=policy_for(doc_types, cmd.doc_type).requires_verified_counterparty,
            id=approval_id, document_id=cmd.document_id, document_version_id=version["id"],
            document_sha256=version["sha256"], doc_type=cmd.doc_type, title=cmd.title,
            initiator_ref=cmd.initiator_ref.as_text(), correlation_id=envelope.correlation_id,
            counterparty_id=counterparty_id, counterparty_ref=counterparty_ref.as_text(),
        )

    approval = begin(await counterparty_is_verified(uow, counterparty_id))
    if approval.status == AWAITING_COUNTERPARTY and await verified_meanwhile(uow, counterparty_id):
        approval = begin(True)
    await uow.approvals.add(approval)
    await uow.external_refs.attach(APPROVAL, approval.id, cmd.external_ref)
    await uow.history.append(
        entity_type=APPROVAL, entity_id=approval.id, action="started", actor=cmd.initiator_ref.as_text(),
        data={"route": [route.doc_type, route.version], "document_version_id": version["id"],
              "sha256": version["sha256"], "external_ref": cmd.external_ref.as_text(), "status": approval.status,
              **({"requested_version_id": requested_version_id} if requested_version_id else {}), **named})
    await publish_status(uow, approval, "started", causation_id=envelope.event_id, refs=[cmd.external_ref])
    if (early := await uow.approvals.withdrawal_before_start(cmd.external_ref)) is not None:
        # The rep withdrew the request before its start got here: the approval begins, so
        # that its history and the document stay, and ends withdrawn at once.
        await uow.approvals.forget_withdrawal_before_start(cmd.external_ref)
        return await _withdraw(uow, approval, reason=early["reason"],
                               withdrawn_by=ExternalRef.parse(early["withdrawn_by"]),
                               withdrawn_at=early["withdrawn_at"], external_ref=cmd.external_ref,
                               causation_id=uuid.UUID(early["command_id"]), before_start=True)
    return {"approval_id": approval.id}


async def prefetch_for_starts(uow: EcmUnitOfWork, commands: list[ecm_commands.StartApprovalV1]) -> None:
    """What `start_approval` reads, looked up once for a batch of commands: the requests'
    references, the document versions, the counterparties' references and statuses."""
    if not commands:
        return
    await uow.external_refs.prefetch(APPROVAL, [c.external_ref for c in commands])
    await uow.approvals.prefetch_withdrawals_before_start([c.external_ref for c in commands])
    await uow.external_refs.prefetch(COUNTERPARTY, [c.counterparty_ref for c in commands])
    await uow.documents.prefetch_versions([c.document_id for c in commands])
    known = [await uow.external_refs.find(COUNTERPARTY, c.counterparty_ref) for c in commands]
    await uow.counterparties.prefetch_statuses([i for i in known if i])


# --- deciding ---------------------------------------------------------------------------


async def _principals(uow: EcmUnitOfWork, actor: Actor, on: date) -> list[Actor]:
    return await uow.deputies.principals_of(actor.id, on)


async def decide(
    uow: EcmUnitOfWork, *, approval_id: str, actor: Actor, decision: str, comment: str | None, reason: str | None,
) -> Approval:
    async with uow:
        approval = await uow.approvals.get(approval_id, for_update=True)
        if approval is None:
            raise NotFound(f"approval {approval_id} not found")
        now = _now()
        stage = approval.current_step
        place = approval.decide(
            actor=actor, decision=decision, comment=comment, reason=reason, at=now,
            principals=await _principals(uow, actor, business_day.today(now)),
            counterparty_verified=await counterparty_is_verified(uow, approval.counterparty_id))
        await uow.approvals.save(approval)
        await uow.history.append(
            entity_type=APPROVAL, entity_id=approval.id, action="decided", actor=f"user:{actor.id}",
            reason=reason, data={
                "stage": stage.name, "stage_no": stage.stage_no, "round": approval.round, "role": actor.role,
                "decision": decision, "comment": comment, "sha256": place.sha256, "by": actor.name,
                "on_behalf_of": place.on_behalf_of, "via_escalation": place.via_escalation,
                "status": approval.status})
        event = "completed" if not approval.is_open or approval.status == "returned" else "stage_decided"
        await publish_status(uow, approval, event, causation_id=None)
        await uow.commit()
    return approval


async def record_delay_reason(uow: EcmUnitOfWork, *, approval_id: str, actor: Actor, code: str, text: str | None,
                              codes: dict[str, str]) -> Approval:
    if code not in codes:
        raise ValueError(f"unknown delay reason code {code!r}; known: {', '.join(codes)}")
    async with uow:
        approval = await uow.approvals.get(approval_id, for_update=True)
        if approval is None:
            raise NotFound(f"approval {approval_id} not found")
        now = _now()
        step = approval.record_delay_reason(actor=actor, code=code, at=now,
                                            principals=await _principals(uow, actor, business_day.today(now)))
        await uow.approvals.save(approval)
        await uow.delay_reasons.add(approval_id=approval.id, stage_no=step.stage_no, stage_name=step.name,
                                    role=step.role, doc_type=approval.doc_type, code=code, text=text,
                                    recorded_by=actor.id, recorded_at=now)
        await uow.history.append(entity_type=APPROVAL, entity_id=approval.id, action="delay_reason",
                                 actor=f"user:{actor.id}", data={"stage": step.name, "code": code, "text": text})
        await publish_status(uow, approval, "delay_reason", causation_id=None)
        await uow.commit()
    return approval


# --- reacting to the document and the registry --------------------------------------------


async def reopen_for_new_version(uow: EcmUnitOfWork, *, document_id: str, version_id: str, sha256: str,
                                 actor: str) -> list[str]:
    """Inside the caller's transaction: every open approval of the document moves to the
    new version; the stages its route's policy names are decided again."""
    reopened = []
    now = _now()
    for approval_id in await uow.approvals.open_for_document(document_id):
        approval = await uow.approvals.get(approval_id, for_update=True)
        previous = approval.document_sha256
        stages = approval.reopen(version_id=version_id, sha256=sha256, at=now,
                                 counterparty_verified=await counterparty_is_verified(uow, approval.counterparty_id))
        if approval.document_sha256 == previous:
            continue
        await uow.approvals.save(approval)
        await uow.history.append(entity_type=APPROVAL, entity_id=approval.id, action="reopened", actor=actor,
                                 data={"from_sha256": previous, "sha256": sha256, "version_id": version_id,
                                       "policy": approval.reopen_policy, "stages": stages, "round": approval.round})
        await publish_status(uow, approval, "reopened", causation_id=None)
        reopened.append(approval.id)
    return reopened


async def resume_waiting(uow: EcmUnitOfWork, waiting: list[str], *, actor: str) -> list[str]:
    """Inside the caller's transaction: the registry verified a counterparty; the
    approvals that waited for it before their last stage go on. `waiting` comes from
    `uow.approvals.lock_awaiting_counterparty`, which the caller runs right after locking
    the counterparty's record and before its first history entry, so that the approvals'
    locks come before the history chain's lock, as in every other transaction. Every
    open approval of the counterparty is locked there, so a decision or a new document
    version putting one of them into the wait right now commits first and is seen as
    waiting: it read the counterparty as pending before the verification committed, and
    without the lock both transactions missed each other and the approval waited for
    good (`verified_meanwhile` covers an approval that is only starting)."""
    resumed = []
    now = _now()
    for approval_id in waiting:
        approval = await uow.approvals.get(approval_id, for_update=True)
        if approval.counterparty_verified(now):
            await uow.approvals.save(approval)
            await uow.history.append(entity_type=APPROVAL, entity_id=approval.id, action="counterparty_verified",
                                     actor=actor, data={"counterparty_id": approval.counterparty_id})
            await publish_status(uow, approval, "counterparty_verified", causation_id=None)
            resumed.append(approval.id)
    return resumed


# --- the deadline clock -----------------------------------------------------------------


async def check_deadlines(uow: EcmUnitOfWork, *, now: datetime | None = None) -> dict:
    """Reminders before a stage is due, escalation after. Each happens once per stage
    entry; running the clock twice changes nothing the second time."""
    now = now or _now()
    counts = {"reminded": 0, "escalated": 0}
    async with uow:
        for approval_id in await uow.approvals.with_deadline_work(now):
            approval = await uow.approvals.get(approval_id, for_update=True)
            actions = approval.due_actions(now)
            if not actions:
                continue
            step = approval.current_step
            await uow.approvals.save(approval)
            due = f"{step.due_at:%Y-%m-%d %H:%M} UTC"
            if "remind" in actions:
                counts["reminded"] += 1
                for a in step.assignees:
                    await uow.notifications.add(
                        kind="reminder", approval_id=approval.id, stage_no=step.stage_no, to_role=a.get("role"),
                        to_user=a.get("user"), text=f"«{approval.title[:200]}»: stage {step.name} is due {due}",
                        created_at=now)
            if "escalate" in actions:
                counts["escalated"] += 1
                await uow.history.append(entity_type=APPROVAL, entity_id=approval.id, action="escalated",
                                         actor="system:deadlines", at=now,
                                         data={"stage": step.name, "due_at": step.due_at.isoformat(),
                                               "escalation_role": step.escalation_role})
                for role in filter(None, [step.escalation_role]):
                    await uow.notifications.add(
                        kind="escalation", approval_id=approval.id, stage_no=step.stage_no, to_role=role,
                        text=f"«{approval.title[:200]}»: stage {step.name} was due {due} and is escalated to you",
                        created_at=now)
                await publish_status(uow, approval, "overdue", causation_id=None, now=now)
        await uow.commit()
    return counts


async def deadline_clock_tick(uow_factory) -> dict:
    """One tick of the deadline clock, as the background loop (`metrics.run_deadline_clock`)
    and `POST /api/admin/deadlines/check` run it: reminders and escalations, then the
    withdrawals that met their approval's start after all."""
    counts = await check_deadlines(uow_factory())
    counts["withdrawn"] = await settle_withdrawals_before_start(uow_factory())
    return counts


async def discard_withdrawal_before_start(uow: EcmUnitOfWork, ref: ExternalRef, *, user_id: str) -> dict:
    """An admin lets a kept withdrawal go: its start will not come (its dead letter was
    discarded, or the request never reached the ECM). Should the start come after all,
    the approval then runs as any other. Raises LookupError when none is kept."""
    async with uow:
        kept = await uow.approvals.withdrawal_before_start(ref)
        if kept is None:
            raise LookupError(ref.as_text())
        await uow.approvals.forget_withdrawal_before_start(ref)
        await uow.commit()
    # The reason is the rep's free text: kept in the table, never logged.
    log.info("withdrawal_before_start_discarded", request_ref=ref.as_text(), by=f"user:{user_id}",
             waited_seconds=round((datetime.now(timezone.utc) - kept["received_at"]).total_seconds()))
    return kept


async def settle_withdrawals_before_start(uow: EcmUnitOfWork) -> int:
    """Withdraws the approvals whose withdrawal was kept as having come before them, when
    the two met after all: two replicas took the start and the withdrawal (different
    partitions after a CRM merge) at the same moment, and neither saw the other's
    uncommitted work. Run by the deadline clock (`deadline_clock_tick`); the table is
    almost always empty."""
    settled = 0
    async with uow:
        for early, approval_id in await uow.approvals.withdrawals_met_by_start():
            ref = ExternalRef(system=early["system"], id=early["external_id"])
            approval = await uow.approvals.get(approval_id, for_update=True)
            await uow.approvals.forget_withdrawal_before_start(ref)
            done = await _withdraw(uow, approval, reason=early["reason"],
                                   withdrawn_by=ExternalRef.parse(early["withdrawn_by"]),
                                   withdrawn_at=early["withdrawn_at"], external_ref=ref,
                                   causation_id=uuid.UUID(early["command_id"]))
            settled += done["withdrawn"] is True
        await uow.commit()
    return settled


# --- responsibility moved on the requesting side ----------------------------------------


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
        approval.updated_at = _now()
        await uow.approvals.save(approval)
        await uow.history.append(
            entity_type=APPROVAL, entity_id=approval.id, action="initiator_changed", at=cmd.reassigned_at,
            actor=cmd.reassigned_by_ref.as_text(), data={"from": previous, "to": approval.initiator_ref},
        )
        await publish_status(uow, approval, "initiator_changed", causation_id=envelope.event_id)
        moved.append(approval.id)
    return {"reassigned": moved}


# --- withdrawn on the requesting side ----------------------------------------------------


async def withdraw_approval(uow: EcmUnitOfWork, cmd: ecm_commands.WithdrawApprovalV1, envelope: Envelope) -> dict:
    """The rep took the request back: its approval, still open, ends `withdrawn` with the
    rep's reason, recorded in its history and published. One finished before the
    withdrawal got here keeps its outcome, which the requesting side then hears as
    usual. A withdrawal whose approval has not started (its start is held up or was
    dead-lettered, or a CRM merge moved the request to another partition between the
    two) is kept: the start, when it comes, begins the approval and withdraws it at once
    (before, it was dead-lettered for the operator to replay after the start)."""
    approval_id = await uow.external_refs.find(APPROVAL, cmd.external_ref)
    if approval_id is None:
        kept = await uow.approvals.remember_withdrawal_before_start(
            cmd.external_ref, reason=cmd.reason, withdrawn_by=cmd.withdrawn_by_ref.as_text(),
            withdrawn_at=cmd.withdrawn_at, command_id=str(envelope.event_id), received_at=_now())
        log.info("withdrawal_before_start_kept", external_ref=cmd.external_ref.as_text(), kept=kept)
        return {"approval_id": None, "withdrawn": "before_start"}
    approval = await uow.approvals.get(approval_id, for_update=True)
    return await _withdraw(uow, approval, reason=cmd.reason, withdrawn_by=cmd.withdrawn_by_ref,
                           withdrawn_at=cmd.withdrawn_at, external_ref=cmd.external_ref,
                           causation_id=envelope.event_id)


async def _withdraw(uow: EcmUnitOfWork, approval: Approval, *, reason: str, withdrawn_by: ExternalRef,
                    withdrawn_at: datetime, external_ref: ExternalRef, causation_id: uuid.UUID,
                    before_start: bool = False) -> dict:
    status, step, now = approval.status, approval.current_step, _now()
    if not approval.withdraw(reason=reason, at=now):
        return {"approval_id": approval.id, "withdrawn": False, "already": status}
    await uow.approvals.save(approval)
    if step is not None and status == "in_progress" and not before_start:
        for a in step.assignees:  # those who had it in their inbox learn why it left
            await uow.notifications.add(
                kind="withdrawn", approval_id=approval.id, stage_no=step.stage_no, to_role=a.get("role"),
                to_user=a.get("user"), created_at=now,
                text=f"«{approval.title[:200]}» was withdrawn by the requester: {reason}"[:500])
    await uow.history.append(
        entity_type=APPROVAL, entity_id=approval.id, action="withdrawn", at=withdrawn_at,
        actor=withdrawn_by.as_text(), reason=reason,
        data={"from_status": status, "external_ref": external_ref.as_text(),
              **({"before_start": True} if before_start else {})})
    await publish_status(uow, approval, "withdrawn", causation_id=causation_id, withdrawn_by=withdrawn_by)
    return {"approval_id": approval.id, "withdrawn": True}


# --- the public event -------------------------------------------------------------------


async def publish_status(uow: EcmUnitOfWork, approval: Approval, event: str, *, causation_id,
                         now: datetime | None = None, refs: list[ExternalRef] | None = None,
                         withdrawn_by: ExternalRef | None = None) -> None:
    """The public summary: stage, due date, overdue flag, delay reason code. Internal
    comments and free-text delay explanations never leave the ECM. `refs`: the
    approval's external references when the caller knows them all (it just started)."""
    step = approval.current_step if approval.is_open else None
    payload = ecm_events.ApprovalStatusChangedV3(
        approval_id=approval.id,
        external_refs=refs if refs is not None else await uow.external_refs.refs_of(APPROVAL, approval.id),
        counterparty_ref=_ref(approval.counterparty_ref),
        event=event, status=approval.status,
        stage=step.name if step else None, stage_no=approval.current_stage_no if step else None,
        due_at=step.due_at if step and approval.status != AWAITING_COUNTERPARTY else None,
        overdue=approval.overdue(now or _now()) or bool(step and step.escalated_at),
        delay_reason_code=step.delay_reason_code if step else None,
        revision=approval.revision, reason=approval.reason, document_sha256=approval.document_sha256,
        initiator_ref=_ref(approval.initiator_ref), withdrawn_by=withdrawn_by,
    )
    await uow.publish(
        ECM_EVENTS, approval.counterparty_id or approval.id,
        # The approval keeps the correlation id of the request that started it, so the
        # decisions made days later still trace back to that request.
        new_envelope(type=ecm_events.APPROVAL_STATUS_CHANGED,
                     schema_version=LATEST[ecm_events.APPROVAL_STATUS_CHANGED][0], source=SOURCE, payload=payload,
                     correlation_id=approval.correlation_id,
                     causation_id=causation_id),
    )


def _ref(text: str | None) -> ExternalRef | None:
    return ExternalRef.parse(text) if text else None
