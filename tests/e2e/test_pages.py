"""The ECM's pages in real Chromium against the real processes: login, the approver
inbox (overdue first), the approval card (download, decision form with the required
comment), the steward queue (flags and candidates side by side, merge), registry search
and the delay-reason report, with the same rights as the API."""

from __future__ import annotations

import hashlib
import re
import time
from datetime import date, timedelta
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import running_system
from tests.e2e.journey import create_deal_with_document, decide, ecm_approval, request_approval
from tests.support.pages import menu_of, reload_until
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql")


def login(page: Page, system, api, user: str, next_path: str = "/ui/") -> None:
    page.goto(f"{system.ecm_url}/ui/login?next={next_path}")
    page.fill("#token", api.tokens[user])
    page.click("button[type=submit]")


COMPLETE_IDS = {"inn": "7704091230", "kpp": "770401001", "ogrn": "1027700987654"}


def save_and_verify(form, reason: str, **fields: str) -> None:
    """The steward's edit form (the queue's or the card's): fields, the source, "save and verify"."""
    for name, value in fields.items():
        form.locator(f"input[name={name}]").fill(value)
    form.locator("input[name=reason]").fill(reason)
    form.locator("button[value=verify]").click()


def test_login_is_required_and_a_wrong_token_is_refused(page, system, api):
    page.goto(f"{system.ecm_url}/ui/inbox")
    assert "/ui/login" in page.url
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("Unknown token")
    login(page, system, api, "legal-lena")
    expect(page.locator("header .who")).to_contain_text("legal-lena (legal)")

    # Behind a proxy that ends TLS (X-Forwarded-Proto from an address the server trusts,
    # FORWARDED_ALLOW_IPS; the deployment files trust the cluster network), the session
    # cookie is Secure; on plain HTTP it cannot be.
    for proto, secure in (("https", True), (None, False)):
        answer = httpx.post(f"{system.ecm_url}/ui/login", data={"token": api.tokens["legal-lena"]},
                            headers={"X-Forwarded-Proto": proto} if proto else {})
        cookie = answer.headers["set-cookie"].lower()
        assert answer.status_code == 303 and "httponly" in cookie and "samesite=strict" in cookie
        assert ("; secure" in cookie) is secure, cookie


def test_inbox_lists_my_stages_overdue_first_and_the_card_takes_a_decision(page, system, api):
    calm = request_approval(api, create_deal_with_document(api, name="Спокойный договор"))
    calm_approval = ecm_approval(api, calm)
    # An admin shortens the contract route's first deadline: the next approval is due at once.
    route = api.ecm("ecm-admin", "GET", "/api/admin/routes").json()
    latest = max((r for r in route if r["doc_type"] == "contract"), key=lambda r: r["version"])
    spec = latest["spec"]
    spec["stages"][0] = {**spec["stages"][0], "deadline_hours": 0.0003, "remind_before_hours": None}
    spec["stages"][0] = {k: v for k, v in spec["stages"][0].items() if v is not None}
    changed = api.ecm("ecm-admin", "PUT", "/api/admin/routes/contract", json=spec)
    assert changed.status_code == 201, changed.text
    urgent = request_approval(api, create_deal_with_document(api, name="Срочный договор"))
    urgent_approval = ecm_approval(api, urgent)
    assert urgent_approval["route"]["version"] == changed.json()["version"]
    time.sleep(1.5)
    preview = api.ecm("ecm-admin", "GET", "/api/admin/routes/in-flight").json()
    assert {r["version"] for r in preview if r["doc_type"] == "contract"} >= {latest["version"],
                                                                              changed.json()["version"]}

    login(page, system, api, "legal-lena")
    rows = page.locator("#inbox tbody tr")
    ids = [rows.nth(i).get_attribute("data-approval") for i in range(rows.count())]
    assert ids.index(urgent_approval["id"]) < ids.index(calm_approval["id"])
    assert "overdue" in (page.locator(f"tr[data-approval='{urgent_approval['id']}']").get_attribute("class") or "")
    # Whom the contract is with, and whether the registry has verified it yet.
    expect(page.locator(f"tr[data-approval='{calm_approval['id']}'] .counterparty")).to_contain_text(
        "Спокойный договор pending_verification")
    item = next(i for i in api.ecm("legal-lena", "GET", "/api/inbox").json() if i["approval_id"] == calm_approval["id"])
    assert (item["counterparty_id"], item["counterparty_name"], item["counterparty_status"]) == (
        calm_approval["counterparty_id"], "Спокойный договор", "pending_verification")

    page.click(f"tr[data-approval='{calm_approval['id']}'] a")
    expect(page.locator("#current-stage")).to_have_text("legal")
    with page.expect_download() as download:
        page.click("#versions a")
    assert hashlib.sha256(open(download.value.path(), "rb").read()).hexdigest() == calm["document"]["sha256"]

    page.click("button[value=reject]")  # no comment
    expect(page.get_by_role("alert")).to_contain_text("comment is required")
    expect(page.locator("#status")).to_contain_text("in_progress")
    page.fill("#comment", "пункт 4 проверен")
    page.click("button[value=approve]")
    expect(page.get_by_role("status")).to_contain_text("approve")
    expect(page.locator("#current-stage")).to_have_text("finance")
    expect(page.locator("#decisions")).to_contain_text("legal-lena")
    page.click("#sheet-link")
    expect(page.locator("body")).to_contain_text("пункт 4 проверен")
    page.go_back()
    assert page.locator("#decision-form").count() == 0  # nothing left for legal on this approval

    # The delay reason recorded on the urgent card shows up in the report.
    page.goto(f"{system.ecm_url}/ui/approvals/{urgent_approval['id']}")
    page.select_option("#delay-code", "waiting_for_internal_expertise")
    page.fill("#delay-text", "ждём заключение службы безопасности")
    page.click("#delay-form button")
    expect(page.locator("#stages")).to_contain_text("waiting_for_internal_expertise")
    page.goto(f"{system.ecm_url}/ui/reports/delays")
    expect(page.locator("#delays")).to_contain_text("waiting_for_internal_expertise")
    report = api.ecm("ecm-auditor", "GET", "/api/reports/delay-reasons").json()
    assert any(r["code"] == "waiting_for_internal_expertise" and r["stage_name"] == "legal" for r in report)


@pytest.mark.parametrize("user", ["legal-lena", "finance-fedor", "director-dina", "steward-stas", "ecm-auditor",
                                  "ecm-admin"])
def test_every_link_in_a_roles_menu_opens(system, api, user):
    """The menu showed every page to everyone: a lawyer's "Steward queue" answered 403."""
    menu, answers = menu_of(system.ecm_url, api.tokens[user])
    assert "/ui/registry" in menu
    assert {path: status for path, status in answers.items() if status != 200} == {}
    assert ("/ui/steward" in menu) == (user in ("steward-stas", "ecm-auditor", "ecm-admin"))
    assert ("/ui/originals" in menu) == (user in ("legal-lena", "ecm-auditor", "ecm-admin"))


def test_an_approver_names_and_revokes_a_deputy_on_the_page(page, system, api):
    """Deputies were the API's only: an approver going on leave had no page for it."""
    login(page, system, api, "legal-lena")
    page.click("header >> text=Заместители / Deputies")
    page.select_option("#deputy-form select[name=deputy]", "finance-fedor")
    page.fill("#deputy-form input[name=starts_on]", "2099-07-10")
    page.fill("#deputy-form input[name=ends_on]", "2099-07-01")
    page.click("#deputy-form button")
    expect(page.get_by_role("alert")).to_contain_text("ends before it starts")
    expect(page.locator("#deputy-form select[name=deputy]")).to_have_value("finance-fedor")  # kept as filled
    expect(page.locator("#deputy-form input[name=ends_on]")).to_have_value("2099-07-01")
    page.fill("#deputy-form input[name=starts_on]", "2099-07-01")
    page.fill("#deputy-form input[name=ends_on]", "2099-07-14")
    page.click("#deputy-form button")
    expect(page.get_by_role("status")).to_contain_text("Deputy named")
    row = page.locator("#named tbody tr", has_text="finance-fedor")
    expect(row.locator(".state")).to_have_text("upcoming")
    named = [d for d in api.ecm("legal-lena", "GET", "/api/deputies").json() if d["revoked_at"] is None]
    assert [(d["deputy_name"], str(d["starts_on"]), str(d["ends_on"])) for d in named] == [
        ("finance-fedor", "2099-07-01", "2099-07-14")]
    stands_in = api.ecm("finance-fedor", "GET", "/api/deputies").json()
    assert any(d["user_name"] == "legal-lena" for d in stands_in)
    row.locator("button").click()
    expect(page.get_by_role("status")).to_contain_text("Deputy revoked")
    expect(page.locator("#named tbody tr", has_text="finance-fedor").locator(".state")).to_have_text("revoked")
    login(page, system, api, "ecm-auditor", "/ui/deputies")
    expect(page.get_by_role("alert")).to_contain_text("deputies are for those who decide")


def test_legal_puts_the_document_under_legal_hold_from_the_card_and_releases_it(page, system, api):
    """Legal hold was the API's only; a lawyer reading the card could not hold it."""
    flow = request_approval(api, create_deal_with_document(api, name="Спорный договор"))
    approval = ecm_approval(api, flow)
    login(page, system, api, "legal-lena", f"/ui/approvals/{approval['id']}")
    expect(page.locator("#retention")).not_to_contain_text("legal hold")
    page.fill("#legal-hold-form input[name=reason]", "претензия контрагента")
    page.click("#legal-hold-form button")
    expect(page.get_by_role("status")).to_contain_text("legal_hold")
    expect(page.locator("#retention")).to_contain_text("legal hold претензия контрагента")
    document = api.ecm("legal-lena", "GET", f"/api/documents/{approval['document']['id']}").json()
    assert (document["legal_hold"], document["legal_hold_reason"]) == (True, "претензия контрагента")
    page.fill("#legal-hold-form input[name=reason]", "спор урегулирован")
    page.click("#legal-hold-form button")
    expect(page.locator("#retention")).not_to_contain_text("legal hold")
    assert api.ecm("legal-lena", "GET", f"/api/documents/{approval['document']['id']}").json()["legal_hold"] is False
    login(page, system, api, "ecm-auditor", f"/ui/approvals/{approval['id']}")
    expect(page.locator("#retention")).to_be_visible()
    assert page.locator("#legal-hold-form").count() == 0


def test_legal_registers_a_signed_original_hands_it_out_and_takes_it_back_from_the_card(page, system, api):
    """Where the signed paper original of a contract is, and who has taken it out until
    when, was nowhere in the ECM."""
    flow = request_approval(api, create_deal_with_document(api, name="Договор с оригиналом"))
    approval = ecm_approval(api, flow)
    card = f"/ui/approvals/{approval['id']}"
    login(page, system, api, "legal-lena", card)
    expect(page.locator("#originals-none")).to_be_visible()
    page.fill("#register-original input[name=location]", "архив, полка 4")
    page.click("#register-original button")
    expect(page.get_by_role("status")).to_contain_text("original_registered")
    row = page.locator("#originals tr[data-number='1']")
    expect(row.locator(".where")).to_contain_text("архив, полка 4")
    expect(row).to_contain_text("under approval")  # of the version the approval is on

    form = row.locator("form.hand-out-original")
    due = date.fromisoformat(form.locator("input[name=due_back]").get_attribute("min")) + timedelta(days=3)
    form.locator("select[name=to_user_id]").select_option(label="director-dina (director)")
    form.locator("input[name=due_back]").fill(due.isoformat())
    form.locator("input[name=purpose]").fill("подписание допсоглашения")
    form.locator("button").click()
    expect(page.get_by_role("status")).to_contain_text("original_handed_out")
    expect(row.locator(".where")).to_contain_text(f"director-dina до / until {due.isoformat()}")
    (kept,) = api.ecm("legal-lena", "GET", f"/api/documents/{approval['document']['id']}/originals").json()
    assert (kept["state"], kept["holder_name"], kept["due_back"], kept["purpose"]) == (
        "handed_out", "director-dina", due.isoformat(), "подписание допсоглашения")

    login(page, system, api, "director-dina", "/ui/inbox")  # the holder is reminded where it is
    held = page.locator("#held-originals")
    expect(held).to_contain_text(due.isoformat())
    assert held.locator("a").first.get_attribute("href") == card
    login(page, system, api, "ecm-auditor", "/ui/originals")  # the office's register of those out
    out = page.locator("#originals-out tr", has_text="подписание допсоглашения")
    expect(out).to_contain_text("director-dina")
    expect(out).to_contain_text("архив, полка 4")
    assert out.locator("a").get_attribute("href") == card
    export = page.request.get(f"{system.ecm_url}{page.locator('#originals-csv').get_attribute('href')}")
    assert export.status == 200 and "подписание допсоглашения" in export.body().decode("utf-8-sig")

    login(page, system, api, "legal-lena", card)
    row.locator("form.return-original input[name=location]").fill("сейф")
    row.locator("form.return-original button").click()
    expect(page.get_by_role("status")).to_contain_text("original_returned")
    expect(row.locator(".where")).to_have_text("сейф")
    page.click("#original-movements summary")  # where it has been, from the document's history
    moves = page.locator("#original-movements tbody tr")
    expect(moves).to_have_count(3)
    expect(moves.nth(1)).to_contain_text(f"director-dina до / until {due.isoformat()}: подписание допсоглашения")
    expect(moves.nth(2)).to_contain_text("← director-dina → сейф")
    expect(moves.nth(2)).to_contain_text("legal-lena")
    login(page, system, api, "ecm-auditor", card)
    expect(page.locator("#originals")).to_contain_text("сейф")
    assert page.locator("#register-original, form.hand-out-original, form.return-original").count() == 0


def test_pages_respect_rights(page, system, api):
    flow = request_approval(api, create_deal_with_document(api, name="Чужой договор"))
    approval = ecm_approval(api, flow)
    login(page, system, api, "steward-stas")
    response = page.goto(f"{system.ecm_url}/ui/approvals/{approval['id']}")
    assert response.status == 403
    expect(page.get_by_role("alert")).to_contain_text("neither owns")
    assert api.ecm("steward-stas", "GET", f"/api/approvals/{approval['id']}").status_code == 403
    # The auditor reads the card but gets no decision form.
    login(page, system, api, "ecm-auditor", f"/ui/approvals/{approval['id']}")
    expect(page.locator("#current-stage")).to_have_text("legal")
    assert page.locator("#decision-form").count() == 0
    # The register of originals is not a finance page; nor are the card's original forms.
    login(page, system, api, "finance-fedor")
    assert page.goto(f"{system.ecm_url}/ui/originals").status == 403
    assert page.request.post(f"{system.ecm_url}/ui/approvals/{approval['id']}/originals",
                             form={"location": "mine"}).status == 403


def test_steward_queue_shows_flags_and_candidates_side_by_side_and_merges(page, system, api):
    flow = request_approval(api, create_deal_with_document(api, name="Сбербанк России"))
    approval = ecm_approval(api, flow)
    login(page, system, api, "steward-stas")
    assert page.url.endswith("/ui/steward")
    section = page.locator(f"section[data-counterparty='{approval['counterparty_id']}']")
    expect(section.locator(".flags")).to_contain_text("inn_missing")
    candidate = section.locator(".candidate").first
    expect(candidate).to_contain_text("Сбербанк России")
    expect(candidate).to_contain_text("7707083893")

    section.locator("form[action$='/verify'] button").click()  # ids missing: refused with the reason
    expect(page.get_by_role("alert")).to_contain_text("identifiers are missing")

    section = page.locator(f"section[data-counterparty='{approval['counterparty_id']}']")
    merge = section.locator(".candidate").first.locator("form[action$='/merge']")
    merge.locator("input[name=reason]").fill("the same bank, typed by sales without its INN")
    merge.locator("button").click()
    expect(page.get_by_role("status")).to_contain_text("merge")
    assert page.locator(f"section[data-counterparty='{approval['counterparty_id']}']").count() == 0

    page.goto(f"{system.ecm_url}/ui/registry?q=7707083893")
    expect(page.locator("#results")).to_contain_text("Сбербанк России")
    page.goto(f"{system.ecm_url}/ui/registry?q=" + "сбербанк")
    assert re.search(r"merged", page.locator("#results").inner_text())
    # The merged record's approval now points at the survivor.
    moved = api.ecm("ecm-auditor", "GET", f"/api/approvals/{approval['id']}").json()
    survivor = api.ecm("steward-stas", "GET", "/api/counterparties?status=verified").json()
    assert moved["counterparty_id"] in {c["id"] for c in survivor if c["inn"] == "7707083893"}


def test_the_steward_queue_shows_first_the_records_an_approval_waits_on(page, system, api):
    """A record holding up a contract came wherever its name sorted among the first hundred."""
    idle = ecm_approval(api, request_approval(api, create_deal_with_document(api, name="АА Первая по алфавиту")))
    held = ecm_approval(api, request_approval(api, create_deal_with_document(api, name="ЯЯ Последняя по алфавиту")))
    for role in ("legal", "finance"):
        decide(api, held["id"], role)
    login(page, system, api, "steward-stas")
    sections = page.locator("section.pending")
    classes = [sections.nth(i).get_attribute("class") or "" for i in range(sections.count())]
    ids = [sections.nth(i).get_attribute("data-counterparty") for i in range(sections.count())]
    position = ids.index(held["counterparty_id"])
    assert all("holding" in c for c in classes[:position + 1]), classes  # only holding ones come before it
    assert position < ids.index(idle["counterparty_id"])
    expect(sections.nth(position).locator(".holding-note")).to_contain_text("An approval waits on this record since")
    expect(page.locator(f"section[data-counterparty='{idle['counterparty_id']}'] .open-note")).to_contain_text("1")
    expect(page.locator("#queue-totals")).to_contain_text("hold up approvals")


def test_a_crm_merge_of_two_organizations_on_two_records_waits_on_the_queue_until_the_steward_merges(
        page, system, api):
    """Sales merged two CRM organizations the registry holds as two records: the merged
    one's reference stays on its record, and the pair waits on the steward's queue; the
    steward keeps one record and merges the other into it, and the pair leaves."""
    flows = [request_approval(api, create_deal_with_document(api, name=name))
             for name in ("ООО «Северный ветер»", "АО «Южная гавань»")]
    merged_record, kept_record = (ecm_approval(api, f)["counterparty_id"] for f in flows)
    answer = api.crm("sales-anna", "POST", f"/api/organizations/{flows[0]['org']['id']}/merge",
                     json={"into_id": flows[1]["org"]["id"]})
    assert answer.status_code == 200, answer.text
    merged_ref = f"crm:{flows[0]['org']['id']}"
    wait_until(lambda: any(h["merged_ref"] == merged_ref for h in api.ecm(
        "steward-stas", "GET", "/api/reports/merges-held-apart").json()), timeout=60, message="merge held apart")
    login(page, system, api, "steward-stas")
    section = page.locator(f"section.held-apart[data-merged-ref='{merged_ref}']")
    expect(section).to_contain_text("Северный ветер")
    expect(section).to_contain_text("Южная гавань")
    keep = section.locator(f"tr.held-record[data-counterparty='{kept_record}'] form[action$='/merge']")
    keep.locator("input[name=reason]").fill("одна компания: в ЕГРЮЛ одно юрлицо")
    keep.locator("button").click()
    expect(page.get_by_role("status")).to_contain_text("merge")
    assert page.locator(f"section.held-apart[data-merged-ref='{merged_ref}']").count() == 0
    moved = api.ecm("ecm-auditor", "GET", f"/api/approvals/{ecm_approval(api, flows[0])['id']}").json()
    assert moved["counterparty_id"] == kept_record != merged_record


def test_the_steward_completes_a_bare_name_from_the_queue_and_verifies_it(page, system, api):
    """Sales sent a bare name; the steward could only verify (refused: ids missing), reject
    or merge on the page, and had to use the API to complete the record. Now: complete it
    on the queue, with the source as the reason, and verify in the same click."""
    flow = request_approval(api, create_deal_with_document(api, name="ООО «Дополненная запись»"))
    approval = ecm_approval(api, flow)
    counterparty_id = approval["counterparty_id"]
    login(page, system, api, "steward-stas")
    section = page.locator(f"section[data-counterparty='{counterparty_id}']")
    save_and_verify(section.locator("form.edit-form"), "карточка компании", inn="7704091231")  # a digit wrong
    expect(page.get_by_role("alert")).to_contain_text("saved, but not verified")
    expect(page.get_by_role("alert")).to_contain_text("inn_invalid")

    form = page.locator(f"section[data-counterparty='{counterparty_id}'] form.edit-form")
    expect(form.locator("input[name=inn]")).to_have_value("7704091231")
    save_and_verify(form, "ЕГРЮЛ", **COMPLETE_IDS)
    expect(page.get_by_role("status")).to_contain_text("verify")
    assert page.locator(f"section[data-counterparty='{counterparty_id}']").count() == 0

    (party,) = api.ecm("steward-stas", "GET", f"/api/counterparties?external_ref=crm:{flow['org']['id']}").json()
    assert (party["status"], party["inn"], party["kpp"], party["ogrn"]) == (
        "verified", "7704091230", "770401001", "1027700987654")
    history = api.ecm("steward-stas", "GET", f"/api/counterparties/{counterparty_id}/history").json()
    assert [(h["action"], h["reason"]) for h in history][-3:] == [
        ("edited", "карточка компании"), ("edited", "ЕГРЮЛ"), ("verified", "ЕГРЮЛ")]
    emptied = api.ecm("steward-stas", "PATCH", f"/api/counterparties/{counterparty_id}",
                      json={"name": None, "reason": "проверка"})
    assert emptied.status_code == 422 and "keeps a name" in emptied.text  # it was a 500


def test_the_counterparty_card_shows_the_record_its_approvals_and_history_and_the_steward_acts_from_it(
        page, system, api):
    """The registry had no page for one record: the approval card showed the counterparty
    as a bare id, registry search a name with nowhere to go, and the steward could act on
    a record only while it waited on the queue (archive and correcting a verified record
    were the API's only). Now every record has a card, reached from all three."""
    flow = request_approval(api, create_deal_with_document(api, name="ООО «Карточка контрагента»"))
    approval = ecm_approval(api, flow)
    counterparty_id = approval["counterparty_id"]

    # Legal reads it from the approval card: the record, the CRM's reference, the approval.
    login(page, system, api, "legal-lena", f"/ui/approvals/{approval['id']}")
    expect(page.locator("#version-sha256")).to_contain_text(approval["document"]["sha256"])
    expect(page.locator("#versions .version-mark")).to_have_text("на согласовании / under approval")
    page.click("#counterparty a")
    assert page.url.endswith(f"/ui/counterparties/{counterparty_id}")
    expect(page.locator("h1")).to_contain_text("ООО «Карточка контрагента»")
    expect(page.locator("#record-status")).to_have_text("pending_verification")
    expect(page.locator("#flags")).to_contain_text("inn_missing")
    expect(page.locator("#refs")).to_have_text(f"crm:{flow['org']['id']}")
    expect(page.locator("#approvals")).to_contain_text(approval["title"])
    expect(page.locator("#history")).to_contain_text("sync_created")
    assert page.locator("#edit, #merge-form, #archive-form, #verify-form").count() == 0  # the steward's only
    page.locator("#approvals a").click()
    assert page.url.endswith(f"/ui/approvals/{approval['id']}")

    # The steward, from the card: an edit that fails the rules says so and stays there;
    # the corrected one verifies; the history names who, why and what changed.
    login(page, system, api, "steward-stas", f"/ui/registry?q={quote('карточка контрагента')}")
    page.locator("#results a", has_text="Карточка контрагента").click()
    assert page.url.endswith(f"/ui/counterparties/{counterparty_id}")
    expect(page.locator("#hidden-approvals")).to_contain_text("1")  # a contract the steward may not read
    save_and_verify(page.locator("#edit form"), "карточка компании", inn="7704091231")  # a check digit wrong
    expect(page.get_by_role("alert")).to_contain_text("saved, but not verified")
    assert page.url.split("?")[0].endswith(f"/ui/counterparties/{counterparty_id}")
    save_and_verify(page.locator("#edit form"), "ЕГРЮЛ", **COMPLETE_IDS)
    expect(page.get_by_role("status")).to_contain_text("verify")
    expect(page.locator("#record-status")).to_have_text("verified")
    expect(page.locator("#history")).to_contain_text("inn: 7704091231 → 7704091230")
    last = page.locator("#history tbody tr").last
    expect(last).to_contain_text("verified")
    expect(last).to_contain_text("steward-stas")  # the user's name, not "user:<id>"
    assert page.locator("#reject-form, #verify-form").count() == 0  # verified: no longer

    # A duplicate is merged into it from the duplicate's card: the card says where it went,
    # and the survivor lists it and now holds its approval.
    twin = request_approval(api, create_deal_with_document(api, name="Карточка контрагента (дубль)"))
    twin_approval = ecm_approval(api, twin)
    assert twin_approval["counterparty_id"] != counterparty_id  # no identifiers: proposed at most, never linked
    page.goto(f"{system.ecm_url}/ui/counterparties/{twin_approval['counterparty_id']}")
    page.fill("#merge-form input[name=other_id]", "no-such-record")
    page.fill("#merge-form input[name=reason]", "дубль")
    page.click("#merge-form button")
    expect(page.get_by_role("alert")).to_contain_text("not found")
    page.fill("#merge-form input[name=other_id]", counterparty_id)
    page.fill("#merge-form input[name=reason]", "та же компания, набрана заново")
    page.click("#merge-form button")
    expect(page.locator("#record-status")).to_have_text("merged")
    page.click("#merged-into a")
    assert page.url.endswith(f"/ui/counterparties/{counterparty_id}")
    expect(page.locator("#merged-in")).to_contain_text("Карточка контрагента (дубль)")
    expect(page.locator("#refs")).to_contain_text(f"crm:{twin['org']['id']}")
    login(page, system, api, "ecm-auditor", f"/ui/counterparties/{counterparty_id}")
    expect(page.locator("#approvals tbody tr")).to_have_count(2)
    assert page.locator("#merge-form").count() == 0
    listed = api.ecm("ecm-auditor", "GET", f"/api/approvals?counterparty_id={counterparty_id}").json()
    assert sorted(a["id"] for a in listed) == sorted([approval["id"], twin_approval["id"]])
    assert api.ecm("steward-stas", "GET", f"/api/approvals?counterparty_id={counterparty_id}").json() == []

    # Archived (liquidated): kept with its history; nothing left to edit or merge.
    login(page, system, api, "steward-stas", f"/ui/counterparties/{counterparty_id}")
    page.fill("#archive-form input[name=reason]", "ликвидирована, запись в ЕГРЮЛ")
    page.click("#archive-form button")
    expect(page.locator("#record-status")).to_have_text("archived")
    assert page.locator("#edit, #merge-form, #archive-form").count() == 0
    assert api.ecm("steward-stas", "GET", f"/api/counterparties/{counterparty_id}").json()["status"] == "archived"
    assert page.goto(f"{system.ecm_url}/ui/counterparties/no-such-record").status == 404

    # A final approval's card says what became of the version it was on.
    decided = api.ecm("legal-lena", "POST", f"/api/approvals/{twin_approval['id']}/decisions",
                      json={"decision": "reject", "comment": "не наш договор", "reason": "wrong party"})
    assert decided.status_code == 200, decided.text
    login(page, system, api, "legal-lena", f"/ui/approvals/{twin_approval['id']}")
    expect(page.locator("#versions .version-mark")).to_have_text("отклонена / rejected")
    expect(page.locator("#counterparty")).to_contain_text("ООО «Карточка контрагента»")


def test_the_steward_loads_an_export_on_its_page_and_reads_the_report(page, system, api, tmp_path):
    export = tmp_path / "export.csv"
    export.write_bytes("Код;Наименование;ИНН;КПП;ОГРН\nPG-1;ООО «Страница»;;;\nPG-2;;;;\n".encode("cp1251"))
    login(page, system, api, "steward-stas")
    page.click("header a[href='/ui/bulk-loads']")
    page.set_input_files("#file", str(export))
    page.fill("#system", "pages")
    page.click("form[action='/ui/bulk-loads'] button[type=submit]")
    expect(page.get_by_role("status")).to_contain_text("Load started")
    load_id = page.get_by_role("status").locator("code").inner_text()
    row = page.locator(f"tr[data-load='{load_id}']")
    reload_until(page, row.locator(".status"), "done")
    expect(row.locator(".status")).to_contain_text("done")
    expect(row.locator(".counts")).to_contain_text("created: 1")
    expect(row.locator(".counts")).to_contain_text("error: 1")
    with page.expect_download() as download:
        row.locator("a").click()
    report = open(download.value.path(), encoding="utf-8").read()
    assert "PG-1" in report and "name is required" in report
    # The same list through the API, newest first; approvers neither see nor open the page.
    assert api.ecm("ecm-auditor", "GET", "/api/counterparties/bulk-loads").json()[0]["id"] == load_id
    login(page, system, api, "legal-lena")
    assert page.locator("header a[href='/ui/bulk-loads']").count() == 0
    assert page.goto(f"{system.ecm_url}/ui/bulk-loads").status == 403
