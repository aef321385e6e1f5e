"""Pure translations between the two vocabularies. Command ids derive from the source
event id, so a replayed event yields the same commands and dedupes downstream."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from schemas import crm_commands, crm_events, ecm_commands, ecm_events
from schemas.common import ExternalRef
from schemas.envelope import Envelope, new_envelope
from schemas.registry import LATEST
from schemas.topics import CRM_COMMANDS, ECM_COMMANDS

SOURCE = "sync-bridge"
CRM = "crm"
BRIDGE_NAMESPACE = uuid.UUID("2d3c8a8e-6a5e-4b8e-9d0b-6b9f1c1a0b51")


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: str
    envelope: Envelope


@dataclass(frozen=True)
class StoredDocument:
    """Where the ECM keeps the bytes the bridge copied for a CRM document."""

    document_id: str
    version_id: str
    sha256: str


def command_id(source_event_id: uuid.UUID, purpose: str) -> uuid.UUID:
    return uuid.uuid5(BRIDGE_NAMESPACE, f"{source_event_id}:{purpose}")


def _command(source: Envelope, purpose: str, type_: str, payload, topic: str, key: str) -> Outgoing:
    envelope = new_envelope(
        type=type_, schema_version=LATEST[type_][0], source=SOURCE, payload=payload,
        correlation_id=source.correlation_id, causation_id=source.event_id,
        event_id=command_id(source.event_id, purpose),
    )
    return Outgoing(topic=topic, key=key, envelope=envelope)


def approval_title(deal_title: str, filename: str, width: int = ecm_commands.TITLE_WIDTH) -> str:
    """"<deal>: <file>", within the ECM's title width: the deal's title is shortened (with
    an ellipsis), the file name kept whole. Each fits the CRM's own columns (500 and 255),
    but both together did not fit the ECM's, and the approval never started."""
    title = f"{deal_title}: {filename}"
    if len(title) <= width:
        return title
    room = width - len(filename) - len("…: ")
    return f"{deal_title[:room]}…: {filename}" if room > 0 else title[:width]


def approval_requested_to_ecm(
    source: Envelope, event: crm_events.ApprovalRequestedV2, stored: StoredDocument
) -> list[Outgoing]:
    """Soft sync of the organization first, then the approval; same key, same partition,
    so the ECM sees them in that order."""
    org = event.organization
    org_ref = ExternalRef(system=CRM, id=org.id)
    sync = ecm_commands.SyncCounterpartyV1(
        external_ref=org_ref, name=org.name, inn=org.inn, kpp=org.kpp, ogrn=org.ogrn,
        legal_form=org.legal_form, country=org.country, addresses=org.addresses,
    )
    start = ecm_commands.StartApprovalV1(
        external_ref=ExternalRef(system=CRM, id=event.approval_request_id),
        counterparty_ref=org_ref,
        initiator_ref=ExternalRef(system=CRM, id=event.requested_by),
        document_id=stored.document_id,
        document_version_id=stored.version_id,
        sha256=stored.sha256,
        doc_type=event.document.doc_type,
        title=approval_title(event.deal.title, event.document.filename),
    )
    return [
        _command(source, "sync_counterparty", ecm_commands.SYNC_COUNTERPARTY, sync, ECM_COMMANDS, org.id),
        _command(source, "start_approval", ecm_commands.START_APPROVAL, start, ECM_COMMANDS, org.id),
    ]


def responsibility_transferred_to_ecm(
    source: Envelope, event: crm_events.ResponsibilityTransferredV1
) -> list[Outgoing]:
    command = ecm_commands.ReassignInitiatorV1(
        counterparty_ref=ExternalRef(system=CRM, id=event.organization_id),
        new_initiator_ref=ExternalRef(system=CRM, id=event.new_owner_id),
        previous_initiator_ref=ExternalRef(system=CRM, id=event.previous_owner_id),
        reassigned_by_ref=ExternalRef(system=CRM, id=event.transferred_by),
        reassigned_at=event.transferred_at,
    )
    return [_command(source, "reassign_initiator", ecm_commands.REASSIGN_INITIATOR, command, ECM_COMMANDS,
                     event.organization_id)]


def approval_withdrawn_to_ecm(source: Envelope, event: crm_events.ApprovalWithdrawnV1) -> list[Outgoing]:
    """Keyed by the organization, as the request's start was: the ECM hears of the
    withdrawal after the start it follows (unless a merge moved the request between the
    two; see ADR 0022)."""
    command = ecm_commands.WithdrawApprovalV1(
        external_ref=ExternalRef(system=CRM, id=event.approval_request_id),
        withdrawn_by_ref=ExternalRef(system=CRM, id=event.withdrawn_by),
        withdrawn_at=event.withdrawn_at, reason=event.reason)
    return [_command(source, "withdraw_approval", ecm_commands.WITHDRAW_APPROVAL, command, ECM_COMMANDS,
                     event.organization_id)]


def organizations_merged_to_ecm(source: Envelope, event: crm_events.OrganizationsMergedV1) -> list[Outgoing]:
    """Keyed by the merged organization, as the CRM's event is: the ECM moves its reference
    after every sync and approval the merged one sent (an approval requested just before
    the merge lands on the merged reference first, then moves with it)."""
    command = ecm_commands.MergeExternalRefsV1(
        merged_ref=ExternalRef(system=CRM, id=event.merged_id),
        survivor_ref=ExternalRef(system=CRM, id=event.survivor_id), merged_at=event.merged_at)
    return [_command(source, "merge_external_refs", ecm_commands.MERGE_EXTERNAL_REFS, command, ECM_COMMANDS,
                     event.merged_id)]


def counterparty_synced_to_crm(source: Envelope, event: ecm_events.CounterpartySyncedV1) -> list[Outgoing]:
    if event.source_ref.system != CRM:
        return []
    command = crm_commands.UpdateOrganizationLinkV2(
        organization_id=event.source_ref.id,
        registry_id=event.counterparty_id,
        link_status="linked" if event.status == "verified" else event.status,
        registry_name=event.legal_name, registry_seq=event.registry_seq,
        registry_inn=event.inn, registry_kpp=event.kpp, registry_ogrn=event.ogrn,
    )
    return [_command(source, "update_organization_link", crm_commands.UPDATE_ORGANIZATION_LINK, command,
                     CRM_COMMANDS, event.source_ref.id)]


def counterparty_changed_to_crm(source: Envelope, event: ecm_events.CounterpartyChangedV1) -> list[Outgoing]:
    """Every CRM organization linked to the record learns its registry state; after a
    merge they point at the survivor."""
    return [
        _command(
            source, f"update_organization_link:{ref.id}", crm_commands.UPDATE_ORGANIZATION_LINK,
            crm_commands.UpdateOrganizationLinkV2(
                organization_id=ref.id, registry_id=event.registry_id,
                link_status="linked" if event.registry_status == "verified" else event.registry_status,
                registry_name=event.legal_name, registry_seq=event.registry_seq,
                registry_inn=event.inn, registry_kpp=event.kpp, registry_ogrn=event.ogrn,
            ),
            CRM_COMMANDS, ref.id,
        )
        for ref in event.external_refs
        if ref.system == CRM
    ]


def approval_status_to_crm(source: Envelope, event: ecm_events.ApprovalStatusChangedV3) -> list[Outgoing]:
    key = event.counterparty_ref.id if event.counterparty_ref and event.counterparty_ref.system == CRM \
        else event.approval_id
    return [
        _command(
            source, f"update_approval_status:{ref.id}", crm_commands.UPDATE_APPROVAL_STATUS,
            crm_commands.UpdateApprovalStatusV3(
                approval_request_id=ref.id, status=event.status, stage=event.stage, due_at=event.due_at,
                overdue=event.overdue, delay_reason_code=event.delay_reason_code, revision=event.revision,
                reason=event.reason, registry_approval_id=event.approval_id,
                notify_user_id=event.initiator_ref.id if event.initiator_ref and event.initiator_ref.system == CRM
                else None,
                changed_at=source.occurred_at,
                withdrawn_by=event.withdrawn_by.id if event.withdrawn_by and event.withdrawn_by.system == CRM
                else None,
            ),
            CRM_COMMANDS, key,
        )
        for ref in event.external_refs
        if ref.system == CRM
    ]


ECM_EVENT_TRANSLATIONS = {
    ecm_events.COUNTERPARTY_SYNCED: counterparty_synced_to_crm,
    ecm_events.COUNTERPARTY_CHANGED: counterparty_changed_to_crm,
    ecm_events.APPROVAL_STATUS_CHANGED: approval_status_to_crm,
}
