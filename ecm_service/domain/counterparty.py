"""The counterparty registry's rules: soft-synced records are always accepted; what is
wrong with them becomes data-quality flags for the steward, never a rejection."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from stdnum.exceptions import ValidationError
from stdnum.ru import inn as ru_inn
from stdnum.ru import ogrn as ru_ogrn

PENDING = "pending_verification"
VERIFIED = "verified"


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


def quality_flags(*, inn: str | None, kpp: str | None, ogrn: str | None, country: str | None) -> list[str]:
    if country not in (None, "RU"):
        return [] if inn else ["tax_id_missing"]
    flags = []
    if not inn:
        flags.append("inn_missing")
    elif not _valid(ru_inn, inn):
        flags.append("inn_invalid")
    if ogrn and not _valid(ru_ogrn, ogrn):
        flags.append("ogrn_invalid")
    if kpp and not (len(kpp) == 9 and kpp[:4].isdigit() and kpp[6:].isdigit()):
        flags.append("kpp_invalid")
    return flags


def _valid(module, value: str) -> bool:
    try:
        module.validate(value)
        return True
    except ValidationError:
        return False


def pick_verified_match(candidates: list[Counterparty], *, inn: str | None, kpp: str | None) -> Counterparty | None:
    """Link only when identifiers agree: INN+KPP, or INN alone when it names exactly one
    verified record. Anything less is left for the steward."""
    if not inn or not _valid(ru_inn, inn):
        return None
    same_inn = [c for c in candidates if c.status == VERIFIED and c.inn == inn]
    if kpp:
        exact = [c for c in same_inn if c.kpp == kpp]
        return exact[0] if len(exact) == 1 else None
    return same_inn[0] if len(same_inn) == 1 else None
