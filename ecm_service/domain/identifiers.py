"""Identifier rules of the registry (python-stdnum does the check digits).

Soft-synced records only collect flags; the steward cannot verify a record while any
flag remains. What is required depends on country and legal form:
- Russia, organization (10-digit INN): INN, KPP and OGRN (13 digits), all valid.
- Russia, sole trader (ИП, 12-digit INN): INN and OGRNIP (15 digits), valid; no KPP.
- EU countries: a valid VAT number. Other countries: a tax id of some kind."""

from __future__ import annotations

import re

from stdnum.eu import vat as eu_vat
from stdnum.exceptions import ValidationError
from stdnum.ru import inn as ru_inn
from stdnum.ru import ogrn as ru_ogrn

KPP = re.compile(r"^\d{4}[\dA-Z]{2}\d{3}$")
SOLE_TRADER_FORMS = {"ИП", "ИНДИВИДУАЛЬНЫЙ ПРЕДПРИНИМАТЕЛЬ"}
EU = {"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT", "LU",
      "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"}


def passes(module, value: str) -> bool:
    """True when python-stdnum's module accepts the value (check digits included)."""
    try:
        module.validate(value)
        return True
    except ValidationError:
        return False


def is_sole_trader(*, legal_form: str | None, inn: str | None) -> bool:
    return (legal_form or "").strip().upper() in SOLE_TRADER_FORMS or (inn is not None and len(inn) == 12)


def quality_flags(*, inn: str | None, kpp: str | None, ogrn: str | None, country: str | None,
                  legal_form: str | None = None, vat: str | None = None) -> list[str]:
    country = (country or "RU").upper()
    if country != "RU":
        if country in EU:
            if not vat:
                return ["vat_missing"]
            return [] if passes(eu_vat, vat) else ["vat_invalid"]
        return [] if (vat or inn) else ["tax_id_missing"]
    flags = []
    sole_trader = is_sole_trader(legal_form=legal_form, inn=inn)
    if not inn:
        flags.append("inn_missing")
    elif not passes(ru_inn, inn):
        flags.append("inn_invalid")
    if not ogrn:
        flags.append("ogrn_missing")
    elif not passes(ru_ogrn, ogrn) or len(ogrn) != (15 if sole_trader else 13):
        flags.append("ogrn_invalid")
    if sole_trader:
        if kpp:
            flags.append("kpp_unexpected")
    elif not kpp:
        flags.append("kpp_missing")
    elif not KPP.match(kpp):
        flags.append("kpp_invalid")
    return flags


def compact(value: str | None) -> str | None:
    value = re.sub(r"[\s\-.]", "", value or "").upper()
    return value or None
