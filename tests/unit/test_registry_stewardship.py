from datetime import datetime, timezone

import pytest

from ecm_service.domain.counterparty import Counterparty, StewardRuleBroken
from ecm_service.domain.names import normalize_name, split_legal_form

NOW = datetime.now(timezone.utc)


def record(**fields):
    values = dict(id="c", name="ООО «Ромашка»", status="pending_verification", created_at=NOW, updated_at=NOW,
                  country="RU")
    values.update(fields)
    party = Counterparty(**values)
    party.refresh_derived()
    return party


@pytest.mark.parametrize("a, b", [
    ("ООО «Ромашка»", 'ООО "Ромашка"'),
    ("Общество с ограниченной ответственностью «Ромашка»", "ооо ромашка"),
    ("ЗАО „Ёлка“", "ЗАО Елка"),
    ("Romashka, LLC", "romashka llc"),
    ("Публичное акционерное общество «Сбербанк России»", "ПАО Сбербанк России"),
])
def test_names_normalise_to_one_spelling(a, b):
    assert normalize_name(a) == normalize_name(b)


def test_legal_form_is_split_from_the_name():
    assert split_legal_form("Общество с ограниченной ответственностью «Ромашка»") == ("ООО", "РОМАШКА")
    assert split_legal_form("Vector GmbH") == ("GMBH", "VECTOR")


def test_a_record_with_missing_ids_cannot_be_verified():
    party = record()
    with pytest.raises(StewardRuleBroken, match="inn_missing"):
        party.verify(NOW)
    assert party.status == "pending_verification"


def test_complete_ids_verify_and_a_verified_record_keeps_them_valid():
    party = record(inn="7707083893", kpp="773601001", ogrn="1027700132195")
    party.verify(NOW)
    assert party.status == "verified"
    with pytest.raises(StewardRuleBroken, match="inn_invalid"):
        party.edit({"inn": "7707083894"}, NOW)
    assert party.inn == "7707083893"  # the refused edit changed nothing
    assert party.edit({"short_name": "Ромашка"}, NOW) == {"short_name": [None, "Ромашка"]}
    with pytest.raises(StewardRuleBroken, match="cannot be edited"):
        party.edit({"status": "archived"}, NOW)


@pytest.mark.parametrize("name", [None, "", "   "])
def test_a_record_keeps_its_name(name):
    """An emptied name reached the name normaliser and failed there (a 500 from the API)."""
    party = record()
    with pytest.raises(StewardRuleBroken, match="keeps a name"):
        party.edit({"name": name, "inn": "7707083893"}, NOW)
    assert (party.name, party.inn) == ("ООО «Ромашка»", None)


def test_merge_rules():
    a, b = record(id="a"), record(id="b", inn="7707083893", kpp="773601001", ogrn="1027700132195")
    with pytest.raises(StewardRuleBroken):
        a.merge_into(a, NOW)
    a.merge_into(b, NOW)
    assert (a.status, a.merged_into) == ("merged", "b")
    with pytest.raises(StewardRuleBroken):
        a.merge_into(b, NOW)
    with pytest.raises(StewardRuleBroken):
        a.reject(NOW)


def test_archive_keeps_the_record_and_closes_it_to_merges_and_edits():
    party = record(inn="7707083893", kpp="773601001", ogrn="1027700132195")
    party.verify(NOW)
    party.archive(NOW)
    assert party.status == "archived"
    with pytest.raises(StewardRuleBroken):
        party.archive(NOW)
    with pytest.raises(StewardRuleBroken):
        record(id="x").merge_into(party, NOW)
    with pytest.raises(StewardRuleBroken):
        party.edit({"short_name": "x"}, NOW)


@pytest.mark.parametrize("status", ["pending_verification", "verified", "rejected", "merged", "archived"])
def test_the_card_offers_the_steward_exactly_the_actions_the_rules_allow(status):
    """The record's card shows a form only for what the domain would accept: a form that
    can only be refused is a dead end, and one missing hides what the steward may do."""
    from ecm_service.domain.counterparty import steward_actions

    def allowed(action: str) -> bool:
        party = record(status=status, inn="7707083893", kpp="773601001", ogrn="1027700132195")
        survivor = record(id="s", status="verified", inn="7736050003", kpp="772801001", ogrn="1027700070518")
        attempt = {"edit": lambda: party.edit({"short_name": "Ромашка"}, NOW), "verify": lambda: party.verify(NOW),
                   "reject": lambda: party.reject(NOW), "archive": lambda: party.archive(NOW),
                   "merge": lambda: party.merge_into(survivor, NOW)}[action]
        try:
            attempt()
        except StewardRuleBroken:
            return False
        return True

    offered = steward_actions(status)
    assert offered == {a for a in ("edit", "verify", "reject", "archive", "merge") if allowed(a)}
