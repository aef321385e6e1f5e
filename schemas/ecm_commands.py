"""Commands the ECM accepts on `ecm.commands` (its own vocabulary)."""

from datetime import datetime

from pydantic import Field

from schemas.common import Contract, ExternalRef
from schemas.crm_events import Address

TITLE_WIDTH = 500  # an approval's and a document's title in the ECM


class SyncCounterpartyV1(Contract):
    """Soft sync of an organization record: always accepted, reconciled later."""

    external_ref: ExternalRef
    # The widths the registry stores (a longer value could never be applied: it is invalid,
    # dead-lettered at once with its reason, instead of failing at the database on every retry).
    name: str = Field(min_length=1, max_length=500)
    inn: str | None = Field(None, max_length=20)
    kpp: str | None = Field(None, max_length=20)
    ogrn: str | None = Field(None, max_length=20)
    legal_form: str | None = Field(None, max_length=100)
    country: str | None = Field(None, max_length=2)
    # Optional, added without a version bump: v1 readers that predate it ignore it.
    addresses: list[Address] = Field(default_factory=list, max_length=20)


class StartApprovalV1(Contract):
    external_ref: ExternalRef
    counterparty_ref: ExternalRef
    initiator_ref: ExternalRef
    document_id: str
    document_version_id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    doc_type: str = Field(max_length=64)
    title: str = Field(max_length=TITLE_WIDTH)


class ReassignInitiatorV1(Contract):
    """In-flight approvals started for this counterparty get a new initiator."""

    counterparty_ref: ExternalRef
    new_initiator_ref: ExternalRef
    previous_initiator_ref: ExternalRef
    reassigned_by_ref: ExternalRef
    reassigned_at: datetime


class WithdrawApprovalV1(Contract):
    """The requesting side took its request back: the approval started for `external_ref`
    closes as withdrawn, unless it has finished already."""
    external_ref: ExternalRef
    withdrawn_by_ref: ExternalRef
    withdrawn_at: datetime
    reason: str = Field(min_length=1, max_length=500)


class MergeExternalRefsV1(Contract):
    """Two records of another system became one: the merged one's reference follows the
    survivor (e.g. a CRM merge of two organizations)."""

    merged_ref: ExternalRef
    survivor_ref: ExternalRef
    merged_at: datetime


SYNC_COUNTERPARTY = "ecm.sync_counterparty"
MERGE_EXTERNAL_REFS = "ecm.merge_external_refs"
REASSIGN_INITIATOR = "ecm.reassign_initiator"
START_APPROVAL = "ecm.start_approval"
WITHDRAW_APPROVAL = "ecm.withdraw_approval"
