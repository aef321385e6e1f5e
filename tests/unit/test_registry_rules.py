from datetime import datetime, timezone

from crm_service.domain.hints import identifier_hints
from ecm_service.domain.counterparty import Counterparty, pick_verified_match
from ecm_service.domain.identifiers import quality_flags

NOW = datetime.now(timezone.utc)
SBER_INN = "7707083893"


def verified(id_, inn, kpp=None, status="verified"):
    return Counterparty(id=id_, name=id_, status=status, created_at=NOW, updated_at=NOW, inn=inn, kpp=kpp)


def test_missing_or_invalid_ids_become_flags_not_rejections():
    assert quality_flags(inn=None, kpp=None, ogrn=None, country="RU") == ["inn_missing", "ogrn_missing",
                                                                          "kpp_missing"]
    assert quality_flags(inn="7707083894", kpp="12", ogrn="123", country="RU") == [
        "inn_invalid", "ogrn_invalid", "kpp_invalid"]
    assert quality_flags(inn=SBER_INN, kpp="773601001", ogrn="1027700132195", country="RU") == []


def test_requirements_follow_country_and_legal_form():
    # A sole trader: 12-digit INN and a 15-digit OGRNIP, and no KPP.
    assert quality_flags(inn="500100732259", kpp=None, ogrn="304500116000157", country="RU", legal_form="ИП") == []
    assert quality_flags(inn="500100732259", kpp="773601001", ogrn="304500116000157", country="RU") == [
        "kpp_unexpected"]
    # An organization's 13-digit OGRN does not do for a sole trader, nor the other way round.
    assert quality_flags(inn="500100732259", kpp=None, ogrn="1027700132195", country="RU") == ["ogrn_invalid"]
    assert quality_flags(inn=None, kpp=None, ogrn=None, country="DE", vat="DE136695976") == []
    assert quality_flags(inn=None, kpp=None, ogrn=None, country="DE", vat="DE136695977") == ["vat_invalid"]
    assert quality_flags(inn=None, kpp=None, ogrn=None, country="DE") == ["vat_missing"]
    assert quality_flags(inn=None, kpp=None, ogrn=None, country="US") == ["tax_id_missing"]


def test_link_only_when_identifiers_agree():
    one = [verified("a", SBER_INN, "773601001")]
    assert pick_verified_match(one, inn=SBER_INN, kpp=None).id == "a"
    assert pick_verified_match(one, inn=SBER_INN, kpp="773601001").id == "a"
    assert pick_verified_match(one, inn=SBER_INN, kpp="770001001") is None  # a branch: for the steward
    branches = one + [verified("b", SBER_INN, "770001001")]
    assert pick_verified_match(branches, inn=SBER_INN, kpp=None) is None  # ambiguous without KPP
    assert pick_verified_match([verified("p", SBER_INN, status="pending_verification")], inn=SBER_INN, kpp=None) is None
    assert pick_verified_match(one, inn="7707083894", kpp=None) is None  # bad check digit never links


def test_crm_hints_are_gentle_messages():
    assert identifier_hints(inn=SBER_INN, kpp="773601001", ogrn=None) == []
    hints = identifier_hints(inn="7707083894", kpp="7736", ogrn=None)
    assert any(h.startswith("INN looks wrong") for h in hints) and any(h.startswith("KPP") for h in hints)
