"""Per document type policy, from the document types file: who may read documents of the
type beyond their owner and participants, and whether approval needs a counterparty the
registry has verified before the last stage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FALLBACK = "default"


@dataclass(frozen=True)
class DocumentType:
    name: str
    retention_years: int
    requires_verified_counterparty: bool = False
    readers: tuple[str, ...] = ()  # roles granted read access on every document of the type


def load_document_types(path: Path) -> dict[str, DocumentType]:
    raw = json.loads(path.read_text())
    types = {
        name: DocumentType(name=name, retention_years=int(spec["retention_years"]),
                           requires_verified_counterparty=bool(spec.get("requires_verified_counterparty", False)),
                           readers=tuple(spec.get("readers", ())))
        for name, spec in raw.items()
    }
    if FALLBACK not in types:
        raise ValueError(f"{path}: needs a '{FALLBACK}' entry")
    return types


def policy_for(types: dict[str, DocumentType], doc_type: str) -> DocumentType:
    return types.get(doc_type) or types.get(FALLBACK) or DocumentType(FALLBACK, 0)
