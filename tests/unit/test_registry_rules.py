from datetime import datetime, timezone

from crm_service.domain.hints import identifier_hints
from ecm_service.domain.identifiers import quality_flags
from ecm_service.domain.matching import (
    BatchDecisions,
    Decision,
    Incoming,
    Known,
    core_name,
    decide,
    name_keys,
    one_digit_apart,
    query_keys,
)

NOW = datetime.now(timezone.utc)
SBER_INN = "7707083893"


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


def known(id_, inn=None, kpp=None, status="verified", name=None, ogrn=None):
    return Known(id=id_, name=name or f"ООО «{id_}»", status=status, inn=inn, kpp=kpp, ogrn=ogrn)


def incoming(name="ООО «Ромашка»", inn=None, kpp=None, ogrn=None):
    return Incoming(name=name, inn=inn, kpp=kpp, ogrn=ogrn, inn_valid=bool(inn) and inn != "7707083894")


def test_link_only_when_identifiers_agree():
    one = [known("a", SBER_INN, "773601001", ogrn="1027700132195")]
    assert decide(incoming(inn=SBER_INN), one).linked_id == "a"
    assert decide(incoming(inn=SBER_INN, kpp="773601001"), one).rule == "inn_kpp"
    assert decide(incoming(inn=SBER_INN, kpp="770001001", ogrn="1027700132195"), one).rule == "ogrn"
    branch = decide(incoming(inn=SBER_INN, kpp="770001001"), one)  # a branch: for the steward
    assert (branch.outcome, branch.rule) == ("propose", "same_inn_other_kpp")
    branches = one + [known("b", SBER_INN, "770001001")]
    assert decide(incoming(inn=SBER_INN), branches).outcome == "propose"  # ambiguous without KPP
    pending = decide(incoming(inn=SBER_INN), [known("p", SBER_INN, status="pending_verification")])
    assert pending.outcome == "propose" and pending.linked_id is None
    bad = decide(incoming(inn="7707083894"), one)  # a bad check digit never links
    assert bad.outcome == "propose" and "inn_one_digit_from_verified" in bad.candidates[0]["rules"]


def test_similar_names_across_scripts_are_proposed_with_evidence_and_others_are_new():
    registry = [known("r", name="ООО «Ромашка»", inn=SBER_INN), known("v", name="АО «Василёк»")]
    latin = decide(incoming(name="Romashka LLC"), registry)
    assert (latin.outcome, latin.rule, latin.candidates[0]["counterparty_id"]) == ("propose", "similar_name", "r")
    assert latin.candidates[0]["score"] == 100 and latin.candidates[0]["agree"] == []
    assert decide(incoming(name="Незабудка"), registry).outcome == "new"
    assert decide(incoming(name="Ромашка 2"), [known("r2", name="Ромашка 1")]).outcome == "new"
    assert decide(incoming(name="Romashka LLC"), registry, not_duplicates={"r"}).outcome == "new"


def test_transliteration_and_typing_slips():
    assert core_name("Общество с ограниченной ответственностью «Щёлково»") == core_name("Shchelkovo LLC")
    assert {"t:romashka", "t:servis", "t:2", "n:2 romashka servis"} <= name_keys("ООО «Ромашка Сервис 2»")
    # Written together or apart, in either script, with y or i: one key.
    assert "t:alfastroi" in name_keys("Альфа-Строй") & query_keys("Alfastroy LLC")
    # One letter changed, dropped or added: the registry word's other half still meets.
    for slip in ("Ромажка", "Ромшка", "Ромаашкка", "Рмоашка"):
        assert name_keys("ООО «Ромашка»") & query_keys(slip), slip
    assert one_digit_apart("7707083893", "7707083839") and one_digit_apart("7707083893", "7707083894")
    assert not one_digit_apart("7707083893", "7707083893") and not one_digit_apart("7707083893", "77070838")


def test_crm_hints_are_gentle_messages():
    assert identifier_hints(inn=SBER_INN, kpp="773601001", ogrn=None) == []
    hints = identifier_hints(inn="7707083894", kpp="7736", ogrn=None)
    assert any(h.startswith("INN looks wrong") for h in hints) and any(h.startswith("KPP") for h in hints)


def test_a_batch_answer_holds_until_a_written_record_shares_a_key_an_inn_or_an_ogrn():
    answer = Decision(outcome="new", rule="no_similar_record")
    hints = BatchDecisions()
    for ref in "abcd":
        hints.offer(ref, Incoming(name="ООО «Вектор»", inn="7736050003", ogrn="1027700132195"), answer)
    assert hints.take("a", Incoming(name="ООО «Вектор»", inn="7736050003", ogrn="1027700132195")) is answer
    assert hints.take("a", Incoming(name="ООО «Вектор»", inn="7736050003", ogrn="1027700132195")) is None  # once
    assert hints.take("b", Incoming(name="ООО «Другое»")) is None  # not the organization it was worked out for
    hints.written("ЗАО «Незабудка»", None, None)
    assert hints.take("c", Incoming(name="ООО «Вектор»", inn="7736050003", ogrn="1027700132195")) is answer
    hints.written("Ромашка", None, "1027700132195")
    assert hints.take("d", Incoming(name="ООО «Вектор»", inn="7736050003", ogrn="1027700132195")) is None
    for written, incoming in [(("Векторр", None, None), Incoming(name="ООО «Вектор»")),  # one letter apart
                              (("Луч", "7736050003", None), Incoming(name="ООО «Вектор»", inn="7736050003"))]:
        hints = BatchDecisions()
        hints.offer("x", incoming, answer)
        hints.written(*written)
        assert hints.take("x", incoming) is None


def test_sharing_only_keys_that_were_generic_keeps_a_batch_answer():
    answer = Decision(outcome="new", rule="no_similar_record")
    item = Incoming(name="Вектор Альфа")
    shared = name_keys("Вектор Бета") & query_keys(item.name)
    assert shared
    for generic, kept in [(set(), False), (shared, True)]:
        hints = BatchDecisions()
        hints.offer("y", item, answer)
        hints.generic(generic)
        hints.written("Вектор Бета", None, None)
        assert (hints.take("y", item) is answer) is kept
