"""Retention per document type and legal hold: a document becomes eligible for disposal
when its retention has run out, unless a legal hold or an approval in flight keeps it.
Retention runs from the document's last use: its creation, its latest version, the end
of its latest approval, whichever came last."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

FALLBACK = "default"

# A document stored again (a CRM transfer naming its bytes anew, a new version) whose
# retention ends this soon has it counted from then: the approval that follows the
# transfer may take this long to arrive (a consumer's outage), and the disposal must not
# take the document from under it meanwhile.
RENEWED_WHEN_ENDING_WITHIN = timedelta(days=30)


def load_retention(path: Path) -> dict[str, int]:
    raw = json.loads(path.read_text())
    years = {doc_type: int(spec["retention_years"]) for doc_type, spec in raw.items()}
    if FALLBACK not in years or any(y < 0 for y in years.values()):
        raise ValueError(f"{path}: needs a '{FALLBACK}' entry and non-negative retention_years")
    return years


def retain_until(created_at: datetime, years: int) -> datetime:
    try:
        return created_at.replace(year=created_at.year + years)
    except ValueError:  # 29 February in a year that has none
        return created_at.replace(year=created_at.year + years, day=28)


def years_for(retention: dict[str, int] | None, doc_type: str) -> int | None:
    retention = retention or {}
    return retention.get(doc_type, retention.get(FALLBACK))


def renewed(document: dict, *, years: int | None, last_used_at: list[datetime | None]) -> datetime | None:
    """The document's retention counted from its last use (`last_used_at`: its latest
    version's and its latest approval's times), never earlier than the stored one. A
    document stored before retention existed (no `retain_until`) stays without one."""
    stored = document.get("retain_until")
    if stored is None or years is None:
        return stored
    return max([stored, *(retain_until(at, years) for at in last_used_at if at is not None)])


def renewed_when_stored_again(document: dict, *, years: int | None, now: datetime) -> datetime | None:
    """The new end of retention of a document stored again now, when its retention ends
    within RENEWED_WHEN_ENDING_WITHIN (None when it needs no renewal: far off, none at all,
    or no later date to give)."""
    stored = document.get("retain_until")
    if stored is None or years is None or stored > now + RENEWED_WHEN_ENDING_WITHIN:
        return None
    until = retain_until(now, years)
    return until if until > stored else None


def disposal_blocker(document: dict, *, now: datetime, approvals_in_flight: int) -> str | None:
    """Why the document may not be disposed of now, or None when it may."""
    if document.get("disposed_at"):
        return "already disposed"
    if document.get("legal_hold"):
        return "under legal hold"
    if approvals_in_flight:
        return "an approval is in progress"
    if document.get("retain_until") is None or document["retain_until"] > now:
        return "retention has not run out"
    return None
