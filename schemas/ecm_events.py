"""Events the ECM publishes on `ecm.events` (its own vocabulary)."""

from datetime import datetime
from typing import Literal

from schemas.common import Contract, ExternalRef


class CounterpartySyncedV1(Contract):
    counterparty_id: str
    status: str
    outcome: Literal["linked", "created", "updated"]
    legal_name: str
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    source_ref: ExternalRef
    # Position in the registry's history: later changes have higher numbers, whatever
    # order their events arrive in.
    registry_seq: int | None = None


class ApprovalStatusChangedV1(Contract):
    """Public view of an approval: never carries approvers' internal comments."""

    approval_id: str
    external_refs: list[ExternalRef]
    # The organization reference the approval was started for, as the sender gave it.
    counterparty_ref: ExternalRef | None = None
    status: Literal["in_progress", "approved", "rejected"]
    stage: str | None = None
    stage_no: int | None = None
    revision: int
    reason: str | None = None
    document_sha256: str
    # Who gets notified about this approval on the requesting side (an opaque ref).
    initiator_ref: ExternalRef | None = None


APPROVAL_STATUSES = Literal["in_progress", "awaiting_counterparty_verification", "returned", "approved", "rejected"]
APPROVAL_EVENTS = Literal["started", "stage_decided", "overdue", "completed", "reopened", "counterparty_verified",
                          "delay_reason", "initiator_changed", "updated"]


class ApprovalStatusChangedV2(Contract):
    """Public summary of an approval after something happened to it. Carries the stage,
    its due date, whether it is overdue and the delay reason code; never approvers'
    internal comments or free-text delay explanations."""

    approval_id: str
    external_refs: list[ExternalRef]
    counterparty_ref: ExternalRef | None = None
    # What happened: started, stage_decided, overdue, completed (approved / rejected /
    # returned), reopened (a new document version), counterparty_verified, ...
    event: APPROVAL_EVENTS = "updated"
    status: APPROVAL_STATUSES
    stage: str | None = None
    stage_no: int | None = None
    due_at: datetime | None = None
    overdue: bool = False
    delay_reason_code: str | None = None
    revision: int
    reason: str | None = None
    document_sha256: str
    initiator_ref: ExternalRef | None = None


def approval_status_changed_v1_to_v2(payload: dict) -> dict:
    return {**payload, "event": "updated", "overdue": False}


class ApprovalStatusChangedV3(ApprovalStatusChangedV2):
    """v3: an approval the requesting side took back ends `withdrawn` (event `withdrawn`),
    and `withdrawn_by` says who did (`reason` carries why)."""

    event: Literal[APPROVAL_EVENTS, "withdrawn"] = "updated"
    status: Literal[APPROVAL_STATUSES, "withdrawn"]
    withdrawn_by: ExternalRef | None = None


def approval_status_changed_v2_to_v3(payload: dict) -> dict:
    """Nothing was withdrawn before v3."""
    return {**payload, "withdrawn_by": None}


class CounterpartyChangedV1(Contract):
    """A steward verified, rejected, merged or edited a registry record."""

    counterparty_id: str
    change: Literal["verified", "rejected", "merged", "edited", "archived"]
    status: str
    # The record other systems should point at: the survivor after a merge, else itself.
    registry_id: str
    registry_status: str
    legal_name: str
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    external_refs: list[ExternalRef]
    reason: str | None = None
    registry_seq: int | None = None


COUNTERPARTY_SYNCED = "ecm.counterparty_synced"
COUNTERPARTY_CHANGED = "ecm.counterparty_changed"
APPROVAL_STATUS_CHANGED = "ecm.approval_status_changed"
