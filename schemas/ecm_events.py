"""Events the ECM publishes on `ecm.events` (its own vocabulary)."""

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


class CounterpartyChangedV1(Contract):
    """A steward verified, rejected, merged or edited a registry record."""

    counterparty_id: str
    change: Literal["verified", "rejected", "merged", "edited"]
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
