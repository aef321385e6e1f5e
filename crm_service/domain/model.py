"""CRM entities. Lenient by design: only an organization's name is required."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

APPROVAL_STATUSES = ("requested", "in_progress", "approved", "rejected")
CLOSED_DEAL_STAGES = ("won", "lost")
FINAL_APPROVAL_STATUSES = ("approved", "rejected")


@dataclass
class Organization:
    id: str
    name: str
    created_by: str
    created_at: datetime
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    legal_form: str | None = None
    country: str | None = None
    addresses: list[dict] = field(default_factory=list)
    owner_id: str | None = None
    registry_id: str | None = None
    registry_status: str | None = None
    registry_name: str | None = None
    registry_seq: int | None = None

    def apply_registry_link(self, *, registry_id: str, status: str, name: str, seq: int | None) -> bool:
        """Link updates may arrive out of order (a merge overtaking an older sync): only
        a newer registry state counts. Updates without a sequence always apply."""
        if seq is not None and self.registry_seq is not None and seq <= self.registry_seq:
            return False
        self.registry_id, self.registry_status, self.registry_name = registry_id, status, name
        self.registry_seq = seq if seq is not None else self.registry_seq
        return True


class NotAllowed(Exception):
    pass


def check_may_transfer(org: Organization, *, actor_id: str, actor_role: str) -> None:
    """A sales user hands over their own organizations; an admin any."""
    if actor_role != "admin" and org.owner_id != actor_id:
        raise NotAllowed("only the responsible manager or an admin may transfer this organization")


@dataclass
class Deal:
    id: str
    organization_id: str
    title: str
    owner_id: str
    created_at: datetime
    stage: str = "new"


@dataclass
class Document:
    id: str
    deal_id: str
    filename: str
    content_type: str
    doc_type: str
    size: int
    sha256: str
    uploaded_by: str
    created_at: datetime


@dataclass
class ApprovalRequest:
    """Sales' read-only view of an approval that lives in the ECM."""

    id: str
    deal_id: str
    document_id: str
    organization_id: str
    requested_by: str
    requested_at: datetime
    status: str = "requested"
    stage: str | None = None
    reason: str | None = None
    revision: int = 0
    registry_approval_id: str | None = None
    updated_at: datetime | None = None
    request_event_id: str | None = None
    due_at: datetime | None = None
    overdue: bool = False
    delay_reason_code: str | None = None

    def apply_status(
        self, *, status: str, stage: str | None, revision: int, reason: str | None,
        registry_approval_id: str, at: datetime, due_at: datetime | None = None, overdue: bool = False,
        delay_reason_code: str | None = None,
    ) -> bool:
        """Updates arrive at least once and may be replayed: only a newer revision counts."""
        if revision <= self.revision:
            return False
        self.status, self.stage, self.reason, self.revision = status, stage, reason, revision
        self.due_at, self.overdue, self.delay_reason_code = due_at, overdue, delay_reason_code
        self.registry_approval_id = registry_approval_id
        self.updated_at = at
        return True
