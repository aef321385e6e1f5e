"""Identifiers for tests."""

from __future__ import annotations

import uuid

from stdnum.ru import inn, ogrn


def valid_ids(seed: int | None = None) -> dict:
    """Identifiers a steward can verify: a company INN and OGRN with correct check digits."""
    n = seed if seed is not None else uuid.uuid4().int
    inn_base = f"77{n % 10**7:07d}"
    ogrn_base = f"10277{n % 10**7:07d}"
    return {"inn": inn_base + inn.calc_company_check_digit(inn_base), "kpp": "773601001",
            "ogrn": ogrn_base + ogrn.calc_check_digit(ogrn_base + "0")}
