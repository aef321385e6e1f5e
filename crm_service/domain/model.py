"""CRM entities. Lenient by design: only an organization's name is required."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from crm_service.domain.names import name_key, search_form

APPROVAL_STATUSES = ("requested", "in_progress", "approved", "rejected")
WITHDRAWN = "withdrawn"
FINAL_APPROVAL_STATUSES = ("approved", "rejected", WITHDRAWN)
# A request in none of these is still open: asking again for its document answers with it.
# One returned for changes stays open: the ECM's approval waits for a new version of the
# same document, which the rep sends with "new version" (the approval then goes on).
CLOSED_REQUEST_STATUSES = FINAL_APPROVAL_STATUSES
RETURNED = "returned"


def unanswered(*, status: str, revision: int, requested_at: datetime, now: datetime, after: timedelta) -> bool:
    """A request the ECM has reported nothing about (no status applied yet) this long after
    it was sent: its delivery is held up somewhere on the way (a dead letter, a stopped
    consumer, a direction paused). Sales see it said, instead of "requested" for good; the
    request is kept and goes on once the way is clear. One the rep withdrew before the
    ECM answered waits for nothing."""
    return revision == 0 and status not in CLOSED_REQUEST_STATUSES and requested_at <= now - after


def filled_from(current: Mapping, other: Mapping, fields: Iterable[str]) -> dict:
    """What `other` adds to `current` without overwriting anything: its value for each
    field `current` leaves empty and, for a list field, the items `current` lacks, after
    its own (a merge into the survivor; a re-import of a merged organization's row)."""
    changes = {}
    for field_name in fields:
        mine, theirs = current.get(field_name), other.get(field_name)
        if isinstance(mine, list):
            union: list = []
            for item in [*mine, *(theirs or [])]:  # items may be dicts (addresses): no set
                if item not in union:
                    union.append(item)
            if union != mine:
                changes[field_name] = union
        elif not mine and theirs:
            changes[field_name] = theirs
    return changes


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
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    website: str | None = None
    activity_type: str | None = None
    region: str | None = None
    org_group: str | None = None
    category: str | None = None
    lead_source: str | None = None
    notes: str | None = None
    name_key: str | None = None
    name_norm: str | None = None
    merged_into: str | None = None
    updated_at: datetime | None = None
    # The registry's INN, KPP and OGRN for the linked counterparty, as last reported.
    registry_ids: dict = field(default_factory=dict)

    def refresh_name_key(self) -> None:
        """The name's blocking key (duplicate hints) and normalised form (search)."""
        self.name_key, self.name_norm = name_key(self.name), search_form(self.name)

    def apply_registry_link(self, *, registry_id: str, status: str, name: str, seq: int | None,
                            ids: dict[str, str | None] | None = None) -> bool:
        """Link updates may arrive out of order (a merge overtaking an older sync): only
        a newer registry state counts. Updates without a sequence always apply. From a
        verified record ("linked"), the registry-owned identifiers fill the CRM's empty
        ones; differing ones are left as they are (see `registry_differences`)."""
        if seq is not None and self.registry_seq is not None and seq <= self.registry_seq:
            return False
        self.registry_id, self.registry_status, self.registry_name = registry_id, status, name
        self.registry_seq = seq if seq is not None else self.registry_seq
        self.registry_ids = {k: v for k, v in (ids or {}).items() if v}
        if status == "linked":
            for key, value in self.registry_ids.items():
                if not getattr(self, key):
                    setattr(self, key, value)
        return True

    def registry_differences(self) -> list[dict]:
        """Where the CRM's own value differs from the registry's: shown, never overwritten."""
        if self.registry_status != "linked":
            return []
        return [{"field": key, "crm": getattr(self, key), "registry": value}
                for key, value in (self.registry_ids or {}).items()
                if getattr(self, key) and getattr(self, key) != value]


def opening_stage(funnel: dict) -> tuple[str, int | None]:
    """Where a new deal starts on the configured funnel: its first stage, with that
    stage's default probability."""
    stage = funnel["stages"][0]
    return stage, funnel.get("probability", {}).get(stage)


@dataclass
class Deal:
    id: str
    organization_id: str
    title: str
    owner_id: str
    created_at: datetime
    stage: str = "new"
    amount: Decimal | None = None
    currency: str | None = None
    expected_close_date: date | None = None
    probability: int | None = None
    closed_at: datetime | None = None


@dataclass
class Contact:
    id: str
    full_name: str
    owner_id: str
    created_at: datetime
    organization_id: str | None = None
    position: str | None = None
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    important_dates: list[dict] = field(default_factory=list)
    notes: str | None = None


@dataclass
class Lead:
    id: str
    title: str
    owner_id: str
    created_at: datetime
    status: str = "open"
    company_name: str | None = None
    person_name: str | None = None
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    inn: str | None = None
    source: str | None = None
    notes: str | None = None
    converted_at: datetime | None = None
    organization_id: str | None = None
    contact_id: str | None = None
    deal_id: str | None = None


ACTIVITY_KINDS = ("call", "meeting", "email", "note", "task")


@dataclass
class Activity:
    id: str
    kind: str
    subject: str
    owner_id: str
    created_at: datetime
    notes: str | None = None
    organization_id: str | None = None
    deal_id: str | None = None
    contact_id: str | None = None
    due_at: datetime | None = None
    done_at: datetime | None = None
    reminded_at: datetime | None = None


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
    version_no: int = 1

    def replace_file(self, *, filename: str, content_type: str, size: int, sha256: str, by: str,
                     at: datetime) -> dict | None:
        """The next version of this document, from a new file. Returns the version it
        replaces (to keep), or None when the file is the current one (nothing changes)."""
        if sha256 == self.sha256:
            return None
        previous = {"document_id": self.id, "version_no": self.version_no, "filename": self.filename,
                    "content_type": self.content_type, "size": self.size, "sha256": self.sha256,
                    "uploaded_by": self.uploaded_by, "created_at": self.created_at}
        self.filename, self.content_type, self.size, self.sha256 = filename, content_type, size, sha256
        self.uploaded_by, self.created_at, self.version_no = by, at, self.version_no + 1
        return previous


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
        """Updates arrive at least once and may be replayed: only a newer revision counts.
        A request the rep withdrew takes only an outcome: the ECM's own `withdrawn`, or
        `approved`/`rejected` if its approval finished before the withdrawal reached it
        (the approval then stands, in both systems); news of a stage decided before the
        withdrawal reached the ECM does not bring it back."""
        if revision <= self.revision:
            return False
        if self.status == WITHDRAWN and status not in FINAL_APPROVAL_STATUSES:
            return False
        self.status, self.stage, self.reason, self.revision = status, stage, reason, revision
        self.due_at, self.overdue, self.delay_reason_code = due_at, overdue, delay_reason_code
        self.registry_approval_id = registry_approval_id
        self.updated_at = at
        return True

    def withdraw(self, *, reason: str, at: datetime) -> None:
        """The rep took the request back: closed at once (the ECM hears of it through the
        outbox); asking for the document's approval again starts a new request."""
        self.status, self.stage, self.reason = WITHDRAWN, None, reason
        self.due_at, self.overdue, self.delay_reason_code = None, False, None
        self.updated_at = at
