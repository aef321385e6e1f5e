"""Events the CRM publishes on `crm.events` (its own vocabulary)."""

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import Contract


class OrganizationSnapshot(Contract):
    """What the CRM knows about an organization (v1). Never carries personal data."""

    id: str
    name: str = Field(min_length=1, max_length=500)
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    legal_form: str | None = None
    country: str | None = None


class Address(Contract):
    kind: Literal["legal", "postal", "actual"] = "legal"
    country: str | None = Field(None, max_length=2)
    postal_code: str | None = Field(None, max_length=20)
    region: str | None = Field(None, max_length=200)
    city: str | None = Field(None, max_length=200)
    street: str | None = Field(None, max_length=300)
    building: str | None = Field(None, max_length=50)
    text: str | None = Field(None, max_length=1000, description="the address as typed, when not structured")


class OrganizationSnapshotV2(OrganizationSnapshot):
    """v2: structured addresses."""

    addresses: list[Address] = Field(default_factory=list, max_length=20)


class DealRef(Contract):
    id: str
    title: str


class DocumentRef(Contract):
    id: str
    filename: str
    content_type: str
    doc_type: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class ApprovalRequestedV1(Contract):
    """A sales rep asked for approval of a deal document."""

    approval_request_id: str
    requested_at: datetime
    requested_by: str
    organization: OrganizationSnapshot
    deal: DealRef
    document: DocumentRef


class ApprovalRequestedV2(ApprovalRequestedV1):
    """v2: the organization snapshot carries structured addresses."""

    organization: OrganizationSnapshotV2


def approval_requested_v1_to_v2(payload: dict) -> dict:
    """v1 messages knew no addresses: they read as an empty list."""
    return {**payload, "organization": {**payload.get("organization", {}), "addresses": []}}


APPROVAL_REQUESTED = "crm.approval_requested"


class ResponsibilityTransferredV1(Contract):
    """An organization's responsible manager changed in the CRM."""

    organization_id: str
    previous_owner_id: str
    new_owner_id: str
    transferred_by: str
    transferred_at: datetime
    moved_deal_ids: list[str] = Field(default_factory=list)


RESPONSIBILITY_TRANSFERRED = "crm.responsibility_transferred"


class DocumentVersionAddedV1(Contract):
    """A sales rep replaced a deal document's file with a new version while its approval
    is with the ECM (under way, or returned for changes). The ECM stores it as the next
    version of the same document (external ref `crm:<document id>`), and the approvals
    in flight on that document move to it."""

    approval_request_id: str = Field(description="the CRM request whose approval the new version goes to")
    organization_id: str
    deal: DealRef
    document: DocumentRef = Field(description="the document as it now is: the new version's file and hash")
    version_no: int = Field(ge=2, description="the CRM's number of this version of the document")
    added_by: str
    added_at: datetime


DOCUMENT_VERSION_ADDED = "crm.document_version_added"


class ApprovalWithdrawnV1(Contract):
    """A sales rep took an approval request back (the deal fell through, the wrong file was
    sent): the ECM closes its approval as withdrawn, if it is still open there."""

    approval_request_id: str
    organization_id: str
    withdrawn_by: str
    withdrawn_at: datetime
    reason: str = Field(min_length=1, max_length=500, description="why, as the rep put it; approvers see it")


APPROVAL_WITHDRAWN = "crm.approval_withdrawn"


class OrganizationsMergedV1(Contract):
    """A sales user merged two CRM organizations: the merged one now points at the survivor."""

    merged_id: str
    survivor_id: str
    merged_by: str
    merged_at: datetime


ORGANIZATIONS_MERGED = "crm.organizations_merged"
