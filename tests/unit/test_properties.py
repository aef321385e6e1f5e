"""Property tests (hypothesis): the translations, the name normaliser and matching keys,
the identifier checks, the column-mapping suggester and the import parser hold their
promises for any input, garbage included."""

from __future__ import annotations

import csv
import string
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crm_service.domain.hints import identifier_hints
from crm_service.domain.names import name_key as crm_name_key
from crm_service.service_layer.imports import FIELDS, read_header, suggest_mapping
from ecm_service.domain.identifiers import compact, quality_flags
from ecm_service.domain.matching import Incoming, Known, core_name, decide, name_keys, one_digit_apart, query_keys
from ecm_service.domain.names import SHORT_FORMS, normalize_name, split_legal_form
from infra.spreadsheets import MAX_CELL, UnreadableFile, clean_cell, read_table
from schemas import crm_events, ecm_events
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import encode, parse_message
from sync_bridge.translation import (
    CRM,
    StoredDocument,
    approval_requested_to_ecm,
    approval_status_to_crm,
    counterparty_changed_to_crm,
)

CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
texts = st.text(max_size=300)
# Text that a database and JSON can hold (no lone surrogates, no NUL).
storable = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200)
ids = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=40)
digits = st.text("0123456789", min_size=0, max_size=15)
words = st.text(CYRILLIC, min_size=5, max_size=14)


# --- names and matching keys -------------------------------------------------------

@given(texts)
def test_normalising_a_name_is_idempotent_and_drops_quotes_and_case(name):
    once = normalize_name(name)
    assert normalize_name(once) == once
    assert not set("«»\"'") & set(once) and once == once.upper()
    form, core = split_legal_form(name)
    assert form is None or form in SHORT_FORMS
    assert not set(core.split()) & SHORT_FORMS


@given(texts)
def test_every_name_finds_itself(name):
    keys = name_keys(name)
    assert all(len(k) <= 64 for k in keys)  # the column's size
    if core_name(name).strip(" _&"):
        assert keys & query_keys(name)


@given(words, st.integers(min_value=0, max_value=100), st.sampled_from(CYRILLIC),
       st.sampled_from(("change", "drop", "add", "swap")))
def test_one_typing_slip_still_shares_a_key(word, at, letter, slip):
    """A word of five letters or more, one letter changed, dropped, added, or (in words up
    to eight letters) two neighbours swapped: the registry record is still a candidate."""
    i = at % len(word)
    if slip == "change":
        typed = word[:i] + letter + word[i + 1:]
    elif slip == "drop":
        typed = word[:i] + word[i + 1:]
    elif slip == "add":
        typed = word[:i] + letter + word[i:]
    else:
        assume(len(word) <= 8 and i + 1 < len(word))
        typed = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    assume(typed.upper() not in SHORT_FORMS)
    assert name_keys(f"ООО «{word}»") & query_keys(typed)


@given(st.text(CYRILLIC + " ", min_size=1, max_size=40))
def test_cyrillic_and_its_transliteration_share_a_key(name):
    from ecm_service.domain.matching import transliterate

    assume(core_name(name).strip() and not set(normalize_name(name).split()) & SHORT_FORMS)
    latin = transliterate(name)
    assume(not set(normalize_name(latin).split()) & SHORT_FORMS)
    assert name_keys(name) & query_keys(latin)


@given(st.text(min_size=1, max_size=60), st.lists(st.tuples(ids, st.text(max_size=60), digits, digits),
                                                   max_size=8))
def test_matching_never_links_without_agreeing_identifiers(name, registry):
    known = [Known(id=f"{i}-{k}", name=n, status="verified", inn=inn or None, kpp=kpp or None)
             for i, (k, n, inn, kpp) in enumerate(registry)]
    decision = decide(Incoming(name=name), known)
    assert decision.outcome in ("propose", "new") and decision.linked_id is None
    assert len(decision.candidates) <= 5


@given(digits, digits)
def test_one_digit_apart_is_symmetric_and_never_equal(a, b):
    assert one_digit_apart(a, b) == one_digit_apart(b, a)
    assert not one_digit_apart(a, a)


# --- identifiers ------------------------------------------------------------------

@given(st.one_of(st.none(), texts), st.one_of(st.none(), texts), st.one_of(st.none(), texts),
       st.one_of(st.none(), st.text(max_size=3)))
def test_identifier_checks_flag_but_never_raise(inn, kpp, ogrn, country):
    flags = quality_flags(inn=compact(inn), kpp=compact(kpp), ogrn=compact(ogrn), country=country)
    assert all(isinstance(f, str) for f in flags)
    assert all(isinstance(h, str) for h in identifier_hints(inn=inn, kpp=kpp, ogrn=ogrn))


@given(st.one_of(st.none(), texts))
def test_compacting_an_identifier_is_idempotent(value):
    assert compact(compact(value)) == compact(value)


@given(st.integers(min_value=10**8, max_value=10**9 - 1))
def test_a_valid_inn_is_never_flagged_invalid(n):
    from stdnum.ru import inn as ru_inn

    inn = f"{n}" + ru_inn.calc_company_check_digit(f"{n}")
    assert "inn_invalid" not in quality_flags(inn=inn, kpp="773601001", ogrn=None, country="RU")
    assert not [h for h in identifier_hints(inn=inn, kpp=None, ogrn=None) if "INN" in h and "check" in h]


@given(texts)
def test_crm_blocking_key_never_raises_and_is_bounded(name):
    key = crm_name_key(name)
    assert key is None or (isinstance(key, str) and len(key) <= 100)


# --- column mapping ----------------------------------------------------------------

SYNONYMS = [(field, s) for field, synonyms in FIELDS.items() for s in synonyms]


@given(st.lists(st.one_of(st.none(), texts, st.integers(), st.floats(allow_nan=True)), max_size=30))
def test_the_mapping_suggestion_is_always_usable(header):
    mapping = suggest_mapping(header)
    assert all(k.isdigit() and int(k) < len(header) for k in mapping)
    assert set(mapping.values()) <= set(FIELDS) and len(set(mapping.values())) == len(mapping)


@given(st.lists(st.sampled_from(SYNONYMS), min_size=1, max_size=10, unique_by=lambda p: p[0]), st.randoms())
def test_known_titles_are_recognised_in_any_order_and_case(pairs, rnd):
    rnd.shuffle(pairs)
    header = [rnd.choice([s.upper(), s.title(), f"  {s} "]) for _, s in pairs]
    mapping = suggest_mapping(header)
    assert mapping == {str(i): field for i, (field, _) in enumerate(pairs)}


# --- the import parser --------------------------------------------------------------

# What a spreadsheet cell can hold: no surrogates, controls or U+FFFE/U+FFFF (not XML
# characters; openpyxl writes them into a sheet no reader can parse, see test_row_sources).
printable = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
cells = st.one_of(st.none(), st.text(printable, max_size=200), st.integers(min_value=-10**15, max_value=10**15),
                  st.floats(allow_nan=False, allow_infinity=False), st.just("=SUM(A1:A3)"),
                  st.text(printable, min_size=MAX_CELL, max_size=MAX_CELL + 50))


@given(st.one_of(st.none(), texts, st.integers(), st.floats(allow_nan=False)))
def test_a_cleaned_cell_is_text_without_formulas_and_bounded(value):
    cell = clean_cell(value)
    assert cell is None or (isinstance(cell, str) and cell == cell.strip() and 0 < len(cell) <= MAX_CELL
                            and not cell.startswith("=") and "\x00" not in cell)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"),
                                 max_size=50), min_size=1, max_size=6), min_size=1, max_size=20),
       st.sampled_from(("utf-8", "utf-8-sig", "cp1251", "utf-16")), st.sampled_from((",", ";", "\t")))
def test_a_csv_reads_back_cell_for_cell_in_either_encoding_and_delimiter(tmp_path, rows, encoding, delimiter):
    # The delimiter is guessed (Excel in Russian writes ';', its "Unicode text" a tab): a
    # file is only unambiguous when its cells do not hold another delimiter (a one-column
    # file of ";" is either).
    for other in {",", ";", "\t"} - {delimiter}:
        rows = [[c.replace(other, " ") for c in row] for row in rows]
    if encoding == "cp1251":
        rows = [[c.encode("cp1251", "replace").decode("cp1251") for c in row] for row in rows]
    path = tmp_path / "rows.csv"
    with open(path, "w", encoding=encoding, newline="") as out:
        csv.writer(out, delimiter=delimiter).writerows(rows)
    back = list(read_table(path))
    assert back == rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_garbage_bytes_are_either_rows_or_a_clear_refusal(tmp_path, data):
    for suffix in ("csv", "xlsx"):
        path = tmp_path / f"garbage.{suffix}"
        path.write_bytes(data)
        try:
            rows = list(read_table(path))
        except UnreadableFile as exc:
            assert str(exc)
        else:
            assert all(isinstance(r, list) for r in rows)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(cells, min_size=1, max_size=5), min_size=0, max_size=15))
def test_an_xlsx_with_any_cells_reads_back_cleanly(tmp_path, rows):
    from openpyxl import Workbook
    from openpyxl.utils.exceptions import IllegalCharacterError

    book = Workbook()
    try:
        for row in rows:
            book.active.append(row)
    except IllegalCharacterError:
        assume(False)
    path = tmp_path / "sheet.xlsx"
    book.save(path)
    back = list(read_table(path))
    if not rows:
        with pytest.raises(UnreadableFile):
            read_header(path)
        return
    assert len(back) >= len(rows)
    for original, read in zip(rows, back, strict=False):
        assert all(clean_cell(r) == clean_cell(o) or str(o).startswith("=")
                   for o, r in zip(original, read, strict=False) if not isinstance(o, float))


# --- translations -------------------------------------------------------------------

refs = st.builds(ExternalRef, system=st.sampled_from(("crm", "erp", "ecm")), id=ids)
names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=100)


@given(ids, names, st.one_of(st.none(), st.text("0123456789", min_size=10, max_size=10)), ids, ids, names)
def test_an_approval_request_always_becomes_sync_then_start_on_the_organizations_key(org_id, name, inn, req_id,
                                                                                     user_id, filename):
    payload = crm_events.ApprovalRequestedV2(
        approval_request_id=req_id, requested_at=datetime.now(timezone.utc), requested_by=user_id,
        organization=crm_events.OrganizationSnapshotV2(id=org_id, name=name, inn=inn),
        deal=crm_events.DealRef(id="deal", title=name),
        document=crm_events.DocumentRef(id="doc", filename=filename, content_type="application/pdf",
                                        doc_type="contract", sha256="a" * 64, size=1))
    envelope = new_envelope(type=crm_events.APPROVAL_REQUESTED, schema_version=2, source="crm", payload=payload,
                            correlation_id="c")
    out = approval_requested_to_ecm(envelope, payload, StoredDocument("d", "v", "a" * 64))
    sync, start = (parse_message(encode(o.envelope)).payload for o in out)  # survives the wire
    assert [o.key for o in out] == [org_id, org_id]
    assert sync.name == name and sync.inn == inn and sync.external_ref.id == org_id
    assert start.counterparty_ref == sync.external_ref and start.external_ref.id == req_id
    assert len({o.envelope.event_id for o in out}) == 2


@given(st.lists(refs, max_size=6, unique=True), st.sampled_from(("verified", "pending_verification", "merged")),
       st.integers(min_value=1, max_value=10**9))
def test_a_registry_change_reaches_exactly_the_crm_organizations_that_refer_to_it(external_refs, status, seq):
    event = ecm_events.CounterpartyChangedV1(
        counterparty_id="r", change="verified", status=status, registry_id="r", registry_status=status,
        legal_name="X", registry_seq=seq,
        external_refs=external_refs)
    envelope = new_envelope(type=ecm_events.COUNTERPARTY_CHANGED, schema_version=1, source="ecm", payload=event,
                            correlation_id="c")
    out = counterparty_changed_to_crm(envelope, event)
    assert sorted(o.key for o in out) == sorted(r.id for r in external_refs if r.system == CRM)
    assert len({o.envelope.event_id for o in out}) == len(out)
    commands = [parse_message(encode(o.envelope)).payload for o in out]
    assert all(c.link_status == ("linked" if status == "verified" else status) for c in commands)


@given(st.lists(refs, max_size=4, unique=True), st.one_of(st.none(), refs),
       st.sampled_from(("in_progress", "approved", "rejected", "returned", "withdrawn")),
       st.one_of(st.none(), storable))
def test_an_approval_status_never_carries_more_than_the_public_summary(external_refs, counterparty, status, reason):
    event = ecm_events.ApprovalStatusChangedV3(
        approval_id="a", event="completed", status=status, revision=1, reason=reason, external_refs=external_refs,
        counterparty_ref=counterparty, document_sha256="b" * 64)
    envelope = new_envelope(type=ecm_events.APPROVAL_STATUS_CHANGED, schema_version=3, source="ecm",
                            payload=event, correlation_id="c")
    out = approval_status_to_crm(envelope, event)
    commands = [parse_message(encode(o.envelope)).payload for o in out]
    assert [c.approval_request_id for c in commands] == [r.id for r in external_refs if r.system == CRM]
    assert all(c.status == status and c.reason == reason and c.registry_approval_id == "a" for c in commands)
