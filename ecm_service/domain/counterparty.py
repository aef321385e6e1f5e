"""The counterparty registry's rules: soft-synced records are always accepted; what is
wrong with them becomes data-quality flags for the steward, never a rejection. The
steward's actions are strict: a record is verified only when its identifiers are
complete and valid for its country and legal form."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from ecm_service.domain.identifiers import quality_flags
from ecm_service.domain.matching import match_name
from ecm_service.domain.names import normalize_name

PENDING = "pending_verification"
VERIFIED = "verified"
REJECTED = "rejected"
MERGED = "merged"
ARCHIVED = "archived"
STATUSES = (PENDING, VERIFIED, REJECTED, MERGED, ARCHIVED)
LIVE = (PENDING, VERIFIED)  # the statuses that can be matched
EDITABLE = ("name", "short_name", "legal_form", "country", "inn", "kpp", "ogrn", "vat", "addresses")
CLOSED = (MERGED, ARCHIVED)  # kept with their history; nothing changes them any more
VERIFIABLE = (PENDING, REJECTED)
REJECTABLE = (PENDING,)


class StewardRuleBroken(Exception):
    """The action is not allowed in the record's present state (HTTP 409)."""


def steward_actions(status: str) -> set[str]:
    """What the steward may do to a record in this status, by the same status rules as the
    actions below (a page offers a form for these only: any other could only be refused).
    Verifying may still be refused for the record's identifiers."""
    actions = set() if status in CLOSED else {"edit", "archive", "merge"}
    if status in VERIFIABLE:
        actions.add("verify")
    if status in REJECTABLE:
        actions.add("reject")
    return actions


@dataclass
class Counterparty:
    id: str
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    legal_form: str | None = None
    country: str | None = None
    quality_flags: list[str] = field(default_factory=list)
    addresses: list[dict] = field(default_factory=list)
    short_name: str | None = None
    vat: str | None = None
    normalized_name: str | None = None
    merged_into: str | None = None
    match_name: str | None = None

    def refresh_derived(self) -> None:
        self.quality_flags = quality_flags(inn=self.inn, kpp=self.kpp, ogrn=self.ogrn, country=self.country,
                                           legal_form=self.legal_form, vat=self.vat)
        self.normalized_name = normalize_name(self.name)
        self.match_name = match_name(self.name)

    def verify(self, at: datetime) -> None:
        if self.status not in VERIFIABLE:
            raise StewardRuleBroken(f"a {self.status} record cannot be verified")
        self.refresh_derived()
        if self.quality_flags:
            raise StewardRuleBroken(f"identifiers are missing or invalid: {', '.join(self.quality_flags)}")
        self.status, self.updated_at = VERIFIED, at

    def reject(self, at: datetime) -> None:
        if self.status not in REJECTABLE:
            raise StewardRuleBroken(f"a {self.status} record cannot be rejected")
        self.status, self.updated_at = REJECTED, at

    def archive(self, at: datetime) -> None:
        """No longer in business with us (liquidated, closed): kept, never proposed or linked."""
        if self.status in CLOSED:
            raise StewardRuleBroken(f"a {self.status} record cannot be archived")
        self.status, self.updated_at = ARCHIVED, at

    def merge_into(self, survivor: Counterparty, at: datetime) -> None:
        if survivor.id == self.id:
            raise StewardRuleBroken("a record cannot be merged into itself")
        if self.status in CLOSED or survivor.status in (*CLOSED, REJECTED):
            raise StewardRuleBroken(f"cannot merge a {self.status} record into a {survivor.status} one")
        self.status, self.merged_into, self.updated_at = MERGED, survivor.id, at

    def edit(self, changes: dict, at: datetime) -> dict:
        """Applies field changes; returns {field: [old, new]} for the history."""
        if self.status in CLOSED:
            raise StewardRuleBroken(f"a {self.status} record cannot be edited")
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise StewardRuleBroken(f"{', '.join(unknown)} cannot be edited")
        if "name" in changes and not (changes["name"] or "").strip():
            raise StewardRuleBroken("a counterparty keeps a name; it cannot be emptied")
        diff = {name: [getattr(self, name), value] for name, value in changes.items() if getattr(self, name) != value}
        # Check on a copy: a refused edit leaves the record exactly as it was.
        candidate = replace(self, **{name: new for name, (_, new) in diff.items()})
        candidate.refresh_derived()
        if self.status == VERIFIED and candidate.quality_flags:
            raise StewardRuleBroken(
                f"a verified record must keep valid identifiers: {', '.join(candidate.quality_flags)}")
        for name, (_, new) in diff.items():
            setattr(self, name, new)
        self.quality_flags, self.normalized_name = candidate.quality_flags, candidate.normalized_name
        self.match_name = candidate.match_name
        self.updated_at = at
        return diff
