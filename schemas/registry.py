"""Which payload model belongs to which (type, schema_version), and how old versions
are upcast on read (never rewritten in the topic)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas import crm_commands, crm_events, ecm_commands, ecm_events
from schemas.envelope import Envelope
from schemas.topics import CRM_COMMANDS, CRM_EVENTS, ECM_COMMANDS, ECM_EVENTS

MAX_MESSAGE_BYTES = 1_000_000

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# Latest version of every message type and its model.
LATEST: dict[str, tuple[int, type[BaseModel]]] = {
    crm_events.APPROVAL_REQUESTED: (2, crm_events.ApprovalRequestedV2),
    ecm_commands.SYNC_COUNTERPARTY: (1, ecm_commands.SyncCounterpartyV1),
    ecm_commands.START_APPROVAL: (1, ecm_commands.StartApprovalV1),
    crm_events.RESPONSIBILITY_TRANSFERRED: (1, crm_events.ResponsibilityTransferredV1),
    crm_events.ORGANIZATIONS_MERGED: (1, crm_events.OrganizationsMergedV1),
    crm_events.DOCUMENT_VERSION_ADDED: (1, crm_events.DocumentVersionAddedV1),
    crm_events.APPROVAL_WITHDRAWN: (1, crm_events.ApprovalWithdrawnV1),
    ecm_commands.REASSIGN_INITIATOR: (1, ecm_commands.ReassignInitiatorV1),
    ecm_commands.MERGE_EXTERNAL_REFS: (1, ecm_commands.MergeExternalRefsV1),
    ecm_commands.WITHDRAW_APPROVAL: (1, ecm_commands.WithdrawApprovalV1),
    ecm_events.COUNTERPARTY_SYNCED: (1, ecm_events.CounterpartySyncedV1),
    ecm_events.COUNTERPARTY_CHANGED: (1, ecm_events.CounterpartyChangedV1),
    ecm_events.APPROVAL_STATUS_CHANGED: (3, ecm_events.ApprovalStatusChangedV3),
    crm_commands.UPDATE_APPROVAL_STATUS: (3, crm_commands.UpdateApprovalStatusV3),
    crm_commands.UPDATE_ORGANIZATION_LINK: (2, crm_commands.UpdateOrganizationLinkV2),
}

# The message types each data topic carries (its one producer publishes only these): the
# AsyncAPI document's channels, and the published counts every producer starts at 0.
TYPES_ON_TOPIC: dict[str, tuple[str, ...]] = {
    CRM_EVENTS: (crm_events.APPROVAL_REQUESTED, crm_events.RESPONSIBILITY_TRANSFERRED,
                 crm_events.ORGANIZATIONS_MERGED, crm_events.DOCUMENT_VERSION_ADDED, crm_events.APPROVAL_WITHDRAWN),
    ECM_COMMANDS: (ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL, ecm_commands.REASSIGN_INITIATOR,
                   ecm_commands.MERGE_EXTERNAL_REFS, ecm_commands.WITHDRAW_APPROVAL),
    ECM_EVENTS: (ecm_events.COUNTERPARTY_SYNCED, ecm_events.COUNTERPARTY_CHANGED,
                 ecm_events.APPROVAL_STATUS_CHANGED),
    CRM_COMMANDS: (crm_commands.UPDATE_APPROVAL_STATUS, crm_commands.UPDATE_ORGANIZATION_LINK),
}

# (type, version) -> function turning a payload of that version into version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    (crm_events.APPROVAL_REQUESTED, 1): crm_events.approval_requested_v1_to_v2,
    (ecm_events.APPROVAL_STATUS_CHANGED, 1): ecm_events.approval_status_changed_v1_to_v2,
    (ecm_events.APPROVAL_STATUS_CHANGED, 2): ecm_events.approval_status_changed_v2_to_v3,
    (crm_commands.UPDATE_APPROVAL_STATUS, 1): crm_commands.update_approval_status_v1_to_v2,
    (crm_commands.UPDATE_APPROVAL_STATUS, 2): crm_commands.update_approval_status_v2_to_v3,
    (crm_commands.UPDATE_ORGANIZATION_LINK, 1): crm_commands.update_organization_link_v1_to_v2,
}


class InvalidMessage(Exception):
    """A message that can never be handled as it is: dead-letter it, do not retry."""


@dataclass(frozen=True)
class Message:
    envelope: Envelope
    payload: BaseModel


def upcast(type_: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    latest, _ = LATEST[type_]
    while version < latest:
        step = UPCASTERS.get((type_, version))
        if step is None:
            raise InvalidMessage(f"no upcaster for {type_} v{version}")
        payload = step(payload)
        version += 1
    return payload


def without_values(exc: ValidationError) -> str:
    """Which fields are wrong and why, never their values: pydantic's own text quotes each
    input (an organization's name is a person's for a sole trader), and this text goes to
    the logs and the dead letter's headers."""
    return "; ".join(f"{'.'.join(str(part) for part in error['loc']) or '(message)'}: {error['msg']}"
                     for error in exc.errors(include_url=False, include_input=False))


def parse_message(raw: bytes | None, accepted_types: frozenset[str] | None = None) -> Message:
    if raw is None:
        raise InvalidMessage("empty message value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        envelope = Envelope.model_validate(json.loads(raw))
    except ValidationError as exc:
        raise InvalidMessage(f"not a valid envelope: {without_values(exc)}") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # not JSON: says where, not what
        raise InvalidMessage(f"not a valid envelope: {exc}") from exc
    if envelope.type not in LATEST or (accepted_types is not None and envelope.type not in accepted_types):
        raise InvalidMessage(f"unknown message type {envelope.type!r}")
    latest, model = LATEST[envelope.type]
    if envelope.schema_version > latest:
        raise InvalidMessage(
            f"{envelope.type} schema_version {envelope.schema_version} is newer than supported v{latest}"
        )
    payload = upcast(envelope.type, envelope.schema_version, envelope.payload)
    try:
        return Message(envelope=envelope, payload=model.model_validate(payload))
    except ValidationError as exc:
        raise InvalidMessage(f"invalid {envelope.type} payload: {without_values(exc)}") from exc


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()
