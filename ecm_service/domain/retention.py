"""Retention per document type and legal hold: a document becomes eligible for disposal
when its retention has run out, unless a legal hold or an approval in flight keeps it.
Retention runs from the document's last use: its creation, its latest version, the end
of its latest approval, whichever came last."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

FALLBACK = "default"


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
