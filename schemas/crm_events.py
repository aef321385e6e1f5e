"""Events the CRM publishes on `crm.events` (its own vocabulary)."""

from datetime import datetime

from pydantic import Field

from schemas.common import Contract


class OrganizationSnapshot(Contract):
    """What the CRM knows about an organization. Never carries personal data."""

    id: str
    name: str = Field(min_length=1, max_length=500)
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    legal_form: str | None = None
    country: str | None = None


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


APPROVAL_REQUESTED = "crm.approval_requested"
