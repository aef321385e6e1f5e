"""The CRM's pages for sales in real Chromium against the real processes: quick entry with
hints and duplicate hints, search and filters, the organization card (approval status as
the ECM reports it, timeline), activities and my day, the deal board, and the import
wizard from upload to the row report."""

from __future__ import annotations

import csv
import io

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import running_system
from tests.e2e.journey import (
    SALES,
    create_deal_with_document,
    decide,
    ecm_approval,
    request_approval,
    wait_crm_status,
)
from tests.support.pages import menu_of, reload_until
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql")


def login(page: Page, system, api, user: str = SALES) -> None:
    page.goto(f"{system.crm_url}/ui/login")
    page.fill("#token", api.tokens[user])
    page.click("button[type=submit]")


def test_quick_entry_hints_duplicates_search_and_the_card(page, system, api):
    login(page, system, api)
    assert page.url.endswith("/ui/my-day")
    page.goto(f"{system.crm_url}/ui/organizations")
    page.fill("#quick-entry input[name=name]", "ООО «Быстрый старт»")
    page.fill("#quick-entry input[name=inn]", "7707083894")  # check digit wrong: a hint, saved anyway
    page.click("#quick-entry button")
    expect(page.locator("#org-name")).to_have_text("ООО «Быстрый старт»")
    expect(page.locator(".hint").first).to_contain_text("INN")
    expect(page.locator("#link-text")).to_contain_text("not yet in the registry")

    page.goto(f"{system.crm_url}/ui/organizations")
    page.fill("#quick-entry input[name=name]", "Быстрый старт ООО")
    page.click("#quick-entry button")
    expect(page.locator("#duplicates")).to_contain_text("Быстрый старт")

    page.goto(f"{system.crm_url}/ui/organizations?q=быстрый")
    expect(page.locator("#organizations tbody tr")).to_have_count(2)
    page.goto(f"{system.crm_url}/ui/organizations?q=7707083894&mine=1")
    expect(page.locator("#organizations tbody tr")).to_have_count(1)

    # An activity from the card lands in the timeline and in my day; done removes it.
    page.goto(f"{system.crm_url}/ui/organizations?q=7707083894")
    page.click("#organizations a")
    page.select_option("#activity-form select[name=kind]", "task")
    page.fill("#activity-form input[name=subject]", "Отправить реквизиты")
    page.fill("#activity-form input[name=due_at]", "2020-01-01T10:00")
    page.click("#activity-form button")
    expect(page.locator("#timeline")).to_contain_text("Отправить реквизиты")
    page.goto(f"{system.crm_url}/ui/my-day")
    row = page.locator("#overdue tr", has_text="Отправить реквизиты")
    expect(row).to_have_count(1)
    row.locator("button").click()
    expect(page.locator("#overdue tr", has_text="Отправить реквизиты")).to_have_count(0)

    # Transfer from the card: outside the team it is refused with the reason; within it, done.
    page.goto(f"{system.crm_url}/ui/organizations?q=7707083894")
    page.click("#organizations a")
    page.fill("#transfer-form input[name=new_owner]", "nobody-by-that-name")
    page.click("#transfer-form button")
    expect(page.get_by_role("alert")).to_contain_text("no user named")
    page.fill("#transfer-form input[name=new_owner]", "sales-boris")
    page.click("#transfer-form button")
    expect(page.locator("#owner")).to_have_text("sales-boris")
    expect(page.locator("#timeline")).to_contain_text("responsibility transferred")


def test_the_card_shows_the_approval_as_the_ecm_reports_it_and_the_board_moves_deals(page, system, api):
    flow = request_approval(api, create_deal_with_document(api, name="Карточка и согласование"))
    wait_crm_status(api, flow, "in_progress", "legal")
    login(page, system, api)
    page.goto(f"{system.crm_url}/ui/organizations/{flow['org']['id']}")
    expect(page.locator("#approvals .status")).to_have_text("in_progress")
    expect(page.locator("#approvals")).to_contain_text("legal")
    expect(page.locator("#timeline")).to_contain_text("in progress, stage legal")
    page.goto(f"{system.crm_url}/ui/my-day")  # the rep's approvals in flight, all deals together
    mine = page.locator("#approvals tr", has_text="Deal Карточка и согласование")
    expect(mine).to_have_count(1)
    expect(mine.locator(".status")).to_have_text("in_progress")
    # The notification says which document and deal it is about, and leads to the deal
    # (it was a bare "Approval in progress (legal)", one like every other).
    note = page.locator("#notifications tr", has_text="Deal Карточка и согласование").first
    expect(note).to_contain_text("Approval in progress (legal)")
    expect(note).to_contain_text(flow["document"]["filename"])
    note.locator("a").click()
    assert page.url.endswith(f"/ui/deals/{flow['deal']['id']}")

    page.goto(f"{system.crm_url}/ui/deals?mine=1")
    card = page.locator(f".card[data-deal='{flow['deal']['id']}']")
    expect(card).to_have_count(1)
    assert card.locator("xpath=..").get_attribute("data-stage") == "new"
    card.locator("select").select_option("proposal")
    card.locator("button").click()
    expect(page.locator(f".column[data-stage='proposal'] .card[data-deal='{flow['deal']['id']}']")).to_have_count(1)
    stages = api.crm(SALES, "GET", f"/api/deals/{flow['deal']['id']}/stages").json()
    assert [s["to_stage"] for s in stages] == ["new", "proposal"]


def test_a_rep_sends_a_contract_for_approval_from_the_pages_and_sees_the_ecm_take_it(page, system, api, tmp_path):
    """The whole sales side in the browser: an organization, a deal on it, a contract
    attached and sent with one click; the deal page then shows where the ECM has it. No
    question is asked of the rep along the way."""
    login(page, system, api)
    page.goto(f"{system.crm_url}/ui/organizations")
    page.fill("#quick-entry input[name=name]", "ООО «Сделка из браузера»")
    page.click("#quick-entry button")
    page.click("#edit summary")  # the record completed later, from the card
    page.fill("#edit-form input[name=kpp]", "773601001")
    page.fill("#edit-form textarea[name=phones]", "+7 495 111-22-33")
    page.click("#edit-form button")
    expect(page.get_by_role("status")).to_have_text("Сохранено / Saved")
    expect(page.locator("table").first).to_contain_text("773601001")
    page.fill("#deal-form input[name=title]", "Поставка оборудования")
    page.fill("#deal-form input[name=amount]", "1 200 000,50")
    page.fill("#deal-form input[name=currency]", "rub")
    page.click("#deal-form button")
    expect(page.locator("#deal-title")).to_have_text("Поставка оборудования")
    expect(page.get_by_role("status")).to_contain_text("Deal created")
    expect(page.locator("#deal-stage")).to_contain_text("new (10 %)")

    contract = tmp_path / "Договор поставки.pdf"
    contract.write_bytes(b"%PDF-1.4 a contract from the browser")
    page.set_input_files("#upload-form input[type=file]", str(contract))
    page.click("#upload-form button")
    expect(page.get_by_role("status")).to_contain_text("Document attached")
    row = page.locator("#documents tbody tr", has_text="Договор поставки.pdf")
    expect(row.locator(".status")).to_have_text("—")
    with page.expect_download() as download:
        row.locator("a").click()
    assert open(download.value.path(), "rb").read() == contract.read_bytes()

    row.locator(".request-approval button").click()
    expect(page.get_by_role("status")).to_contain_text("Sent for approval")
    expect(row.locator(".request-approval")).to_have_count(0)  # open: nothing to click twice
    reload_until(page, row.locator(".status"), "in_progress")
    expect(row.locator(".status")).to_have_text("in_progress, legal")
    expect(page.locator("#approvals .status")).to_have_text("in_progress")

    # Legal returns it with what to change; the rep sends the corrected file from this
    # page and the same approval goes on.
    deal_id = page.url.split("?")[0].rsplit("/", 1)[1]
    (request,) = api.crm(SALES, "GET", f"/api/deals/{deal_id}").json()["approvals"]
    (approval,) = api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{request['id']}").json()
    decide(api, approval["id"], "legal", "return", comment="see 4.2", reason="Укажите цену в п. 4.2")
    reload_until(page, row.locator(".status"), "returned")
    expect(row.locator(".status")).to_have_text("returned, legal: Укажите цену в п. 4.2")
    expect(row.locator(".request-approval")).to_have_count(0)  # a second request would start a second approval
    corrected = tmp_path / "Договор поставки, исправлен.pdf"
    corrected.write_bytes(b"%PDF-1.4 a contract from the browser, price in 4.2")
    row.locator(".new-version input[type=file]").set_input_files(str(corrected))
    row.locator(".new-version button").click()
    expect(page.get_by_role("status")).to_contain_text("New version sent")
    row = page.locator("#documents tbody tr", has_text="Договор поставки, исправлен.pdf")
    expect(row.locator(".version")).to_have_text("v2")
    reload_until(page, row.locator(".status"), "in_progress")
    expect(row.locator(".status")).to_have_text("in_progress, legal")

    page.click("#deal-org")
    expect(page.locator("#approvals")).to_contain_text("Поставка оборудования")
    assert page.locator("#deals a").get_attribute("href").endswith(f"/{deal_id}")
    documents = api.crm(SALES, "GET", f"/api/deals/{deal_id}/documents").json()
    assert documents[0]["approval"]["stage"] == "legal"
    org_id = page.url.split("?")[0].rsplit("/", 1)[1]
    (party,) = api.ecm("steward-stas", "GET", f"/api/counterparties?external_ref=crm:{org_id}").json()
    assert party["status"] == "pending_verification"  # the organization went as it was, unchecked


def test_a_rep_withdraws_a_request_from_the_deal_page_and_the_ecm_closes_its_approval(page, system, api):
    """The deal fell through: the rep takes the contract's approval request back from the
    deal page, with a reason. The CRM shows it withdrawn at once, the ECM's approval ends
    `withdrawn` (through the real bridge), an approver's decision is then refused, the
    approvers see the reason, and the document may be sent again as a new request."""
    flow = request_approval(api, create_deal_with_document(api, name="Отзыв из браузера"))
    wait_crm_status(api, flow, "in_progress", "legal")
    approval = ecm_approval(api, flow)
    login(page, system, api)
    page.goto(f"{system.crm_url}/ui/deals/{flow['deal']['id']}")
    row = page.locator("#documents tbody tr", has_text="contract.txt")
    expect(row.locator(".request-approval")).to_have_count(0)
    row.locator(".withdraw input[name=reason]").fill("Клиент выбрал другого поставщика")
    row.locator(".withdraw button").click()
    expect(page.get_by_role("status")).to_contain_text("Request withdrawn")
    expect(row.locator(".status")).to_have_text("withdrawn: Клиент выбрал другого поставщика")
    expect(row.locator(".withdraw")).to_have_count(0)
    expect(row.locator(".request-approval button")).to_have_text("Отправить снова / Send again")

    closed = wait_until(lambda: (a := api.ecm("legal-lena", "GET", f"/api/approvals/{approval['id']}").json())
                        ["status"] == "withdrawn" and a, timeout=60, message="ECM approval withdrawn")
    assert closed["reason"] == "Клиент выбрал другого поставщика" and closed["current_stage"] is None
    refused = api.ecm("legal-lena", "POST", f"/api/approvals/{approval['id']}/decisions", json={"decision": "approve"})
    assert refused.status_code == 409 and "withdrawn" in refused.text
    again = api.crm(SALES, "POST", f"/api/approval-requests/{flow['request']['id']}/withdraw",
                    json={"reason": "twice"})
    assert again.status_code == 409
    wait_crm_status(api, flow, "withdrawn")  # the ECM's word came back and changed nothing

    row.locator(".request-approval button").click()
    expect(page.get_by_role("status")).to_contain_text("Sent for approval")
    reload_until(page, row.locator(".status"), "in_progress")
    assert api.crm(SALES, "GET", f"/api/deals/{flow['deal']['id']}").json()["approval"]["id"] != flow["request"]["id"]


def test_a_lead_becomes_a_deal_with_one_click_and_a_contact_joins_the_card(page, system, api):
    login(page, system, api)
    page.click("header >> text=Лиды / Leads")
    page.fill("#lead-form input[name=title]", "Запрос с выставки")
    page.fill("#lead-form input[name=company_name]", "ООО «Выставка»")
    page.fill("#lead-form input[name=person_name]", "Ольга Стендова")
    page.click("#lead-form button")
    expect(page.get_by_role("status")).to_have_text("Лид добавлен / Lead added")
    row = page.locator("#leads tbody tr", has_text="Запрос с выставки")
    row.locator(".convert-form input[name=deal_title]").fill("Стенд на 2027 год")
    row.locator(".convert-form button").click()
    expect(page.locator("#deal-title")).to_have_text("Стенд на 2027 год")
    expect(page.get_by_role("status")).to_contain_text("Lead converted")
    page.click("#deal-org")
    expect(page.locator("#org-name")).to_have_text("ООО «Выставка»")
    expect(page.locator("#contacts")).to_contain_text("Ольга Стендова")
    page.fill("#contact-form input[name=full_name]", "Игорь Закупкин")
    page.fill("#contact-form input[name=position]", "закупки")
    page.click("#contact-form button")
    expect(page.locator("#contacts")).to_contain_text("Игорь Закупкин, закупки")


@pytest.mark.parametrize("user", ["sales-anna", "sales-manager-maria", "crm-admin", "crm-auditor"])
def test_every_link_in_a_roles_menu_opens(system, api, user):
    """The auditor's menu offered the import, which answered 403."""
    menu, answers = menu_of(system.crm_url, api.tokens[user])
    assert "/ui/organizations" in menu
    assert {path: status for path, status in answers.items() if status != 200} == {}
    assert ("/ui/imports/new" in menu) == (user != "crm-auditor")


def test_import_wizard_from_upload_to_the_row_report(page, system, api, tmp_path):
    rows = [["Компания", "ИНН", "Телефон", "Сегмент"],
            ["Импорт Один", "7707083893", "+7 495 000-00-01", "A"],
            ["", "", "", ""],
            ["", "7736050003", "", "B"],
            ["Импорт Два", "", "", "B"]]
    path = tmp_path / "orgs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    login(page, system, api)
    page.goto(f"{system.crm_url}/ui/imports/new")
    page.set_input_files("#upload input[type=file]", str(path))
    page.click("#upload button")
    expect(page.locator("#status")).to_have_text("uploaded")
    assert page.locator("select[name=col0]").input_value() == "name"
    assert page.locator("select[name=col1]").input_value() == "inn"
    assert page.locator("select[name=col3]").input_value() == "category"
    page.click("button[value=dry_run]")
    reload_until(page, page.locator("#status"), "dry_run", exact=True)
    expect(page.locator("td[data-outcome=error]")).to_have_text("1")
    page.click("button[value=apply]")
    reload_until(page, page.locator("#status"), "applied", exact=True)
    expect(page.locator("#status")).to_have_text("applied")
    with page.expect_download() as download:
        page.click("#report")
    report = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8-sig").read())))
    assert [r["outcome"] for r in report] == ["possible_duplicate", "error", "create"]
    found = api.crm(SALES, "GET", "/api/organizations", params={"q": "импорт"}).json()
    assert found["total"] == 2
