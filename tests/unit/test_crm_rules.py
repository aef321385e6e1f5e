import pytest

from crm_service.domain.hints import identifier_hints
from crm_service.domain.names import HINT_THRESHOLD, name_key, normalize, similarity
from crm_service.domain.rights import Actor, NotAllowed, check_may_transfer, may_change
from crm_service.service_layer.imports import row_key, suggest_mapping, validate_mapping


@pytest.mark.parametrize("a, b", [
    ("ООО «Ромашка»", "Ромашка"),
    ("Общество с ограниченной ответственностью \"Ромашка\"", "ромашка, ооо"),
    ("ЗАО „Ёлка“", "елка"),
    ("Romashka LLC", "romashka"),
])
def test_legal_forms_quotes_case_and_yo_do_not_make_names_different(a, b):
    assert normalize(a) == normalize(b)
    assert similarity(a, b) == 100


def test_similar_names_are_hinted_and_numbers_tell_companies_apart():
    assert similarity("Ромашка-Сервис", "ООО Ромашка Сервис Плюс") >= HINT_THRESHOLD
    assert similarity("Клиент 1", "Клиент 2") == 0
    assert similarity("СМУ-5", "СМУ 5") == 100
    assert similarity("Ромашка", "Василёк") < HINT_THRESHOLD


def test_the_blocking_key_is_the_longest_word_without_the_legal_form():
    assert name_key("ООО «Ромашка Сервис»") == "ромашка"
    assert name_key("ООО") is None


def test_identifier_hints_are_gentle_and_specific():
    assert identifier_hints(inn="7707083893", kpp="773601001", ogrn="1027700132195") == []
    hints = identifier_hints(inn="7707083894", kpp="77360100", ogrn=None)
    assert len(hints) == 2 and hints[0].startswith("INN") and hints[1].startswith("KPP")


def test_mapping_is_suggested_from_russian_and_english_headers():
    assert suggest_mapping(["Наименование", "ИНН", "Телефон", "Непонятно", "E-mail"]) == {
        "0": "name", "1": "inn", "2": "phone", "4": "email"}
    assert suggest_mapping(["Company", "Tax ID", "Website", "Company"]) == {"0": "name", "1": "inn", "2": "website"}
    assert suggest_mapping([]) == {}


@pytest.mark.parametrize("mapping, message", [
    ({"0": "inn"}, "name"),
    ({"0": "name", "1": "salary"}, "unknown fields"),
    ({"0": "name", "7": "inn"}, "not in the file"),
    ({"0": "name", "1": "name"}, "one column"),
])
def test_a_bad_mapping_is_refused_with_a_reason(mapping, message):
    with pytest.raises(ValueError, match=message):
        validate_mapping(mapping, ["a", "b"])


def test_row_keys_are_stable_inn_kpp_then_external_id_then_fingerprint():
    assert row_key({"inn": "7707083893", "kpp": "773601001", "name": "x"}) == "inn:7707083893:773601001"
    assert row_key({"external_id": "00042", "name": "x"}) == "ext:00042"
    one = row_key({"name": "ООО «Ромашка»", "phone": "1"})
    assert one == row_key({"name": "Ромашка", "phone": "1"}) != row_key({"name": "Ромашка", "phone": "2"})


ANNA, BORIS = Actor("anna", "sales", "north"), Actor("boris", "sales", "north")
MARIA, PETR = Actor("maria", "manager", "north"), Actor("petr", "sales", "south")


def test_owner_team_manager_and_admin_change_others_read():
    assert may_change(ANNA, "anna", "north")
    assert not may_change(BORIS, "anna", "north")
    assert may_change(MARIA, "anna", "north")
    assert not may_change(MARIA, "petr", "south")
    assert may_change(Actor("root", "admin"), "petr", "south")
    assert not may_change(Actor("a", "auditor"), "anna", "north")


def test_ownership_moves_within_the_team_unless_an_admin_moves_it():
    check_may_transfer(ANNA, owner_id="anna", owner_team="north", new_owner_team="north", new_owner_role="sales")
    with pytest.raises(NotAllowed, match="within the team"):
        check_may_transfer(ANNA, owner_id="anna", owner_team="north", new_owner_team="south", new_owner_role="sales")
    with pytest.raises(NotAllowed):
        check_may_transfer(BORIS, owner_id="anna", owner_team="north", new_owner_team="north", new_owner_role="sales")
    check_may_transfer(MARIA, owner_id="anna", owner_team="north", new_owner_team="north", new_owner_role="sales")
    check_may_transfer(Actor("root", "admin"), owner_id="anna", owner_team="north", new_owner_team="south",
                       new_owner_role="sales")
    with pytest.raises(NotAllowed, match="sales user"):
        check_may_transfer(MARIA, owner_id="anna", owner_team="north", new_owner_team="north",
                           new_owner_role="auditor")


def test_a_verified_link_fills_empty_identifiers_and_leaves_differences_visible():
    from datetime import datetime, timezone

    from crm_service.domain.model import Organization

    org = Organization(id="o", name="Сбер", created_by="u", created_at=datetime.now(timezone.utc), inn="7707083893",
                       kpp="770001001")
    ids = {"inn": "7707083893", "kpp": "773601001", "ogrn": "1027700132195"}
    org.apply_registry_link(registry_id="r", status="pending_verification", name="ПАО Сбербанк", seq=1, ids=ids)
    assert org.ogrn is None and org.registry_differences() == []  # only a verified record fills or differs
    assert org.apply_registry_link(registry_id="r", status="linked", name="ПАО Сбербанк", seq=2, ids=ids)
    assert org.ogrn == "1027700132195" and org.kpp == "770001001"  # filled; never overwritten
    assert org.registry_differences() == [{"field": "kpp", "crm": "770001001", "registry": "773601001"}]
    assert not org.apply_registry_link(registry_id="r", status="linked", name="x", seq=1, ids=ids)  # older: ignored


@pytest.mark.parametrize("typed, amount", [
    ("1 200 000,50", "1200000.50"), ("1\u00a0200,5", "1200.5"), ("  ", None),
    ("9999999999999999.99", "9999999999999999.99"),
])
def test_an_amount_is_read_as_people_type_it(typed, amount):
    from decimal import Decimal

    from crm_service.entrypoints.deal_pages import _amount

    assert _amount(typed) == (Decimal(amount) if amount else None)


@pytest.mark.parametrize("typed", ["1e30", "10000000000000000", "-1", "0.001", "NaN", "Infinity", "12,345.6.7", "abc"])
def test_an_amount_that_does_not_fit_is_a_message_not_a_crash(typed):
    """"1e30" overflowed the decimal context while being checked for cents: a 500 from the page."""
    from crm_service.entrypoints.deal_pages import _amount
    from crm_service.service_layer.handlers import InvalidRequest

    with pytest.raises(InvalidRequest, match="amount not understood"):
        _amount(typed)


def test_a_request_is_unanswered_once_the_ecm_has_said_nothing_about_it_for_that_long():
    from datetime import datetime, timedelta, timezone

    from crm_service.domain.model import unanswered

    now, after = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc), timedelta(minutes=15)
    assert unanswered(status="requested", revision=0, requested_at=now - after, now=now, after=after)
    assert not unanswered(status="requested", revision=0, requested_at=now - after + timedelta(seconds=1), now=now,
                          after=after)
    assert not unanswered(status="in_progress", revision=1, requested_at=now - timedelta(days=30), now=now,
                          after=after)  # it answered
    # withdrawn before the ECM answered: nothing is awaited any more
    assert not unanswered(status="withdrawn", revision=0, requested_at=now - timedelta(days=30), now=now, after=after)
