"""The CRM's sales features on both backends through the real app (HTTP in process):
quick entry with hints and duplicate hints, rights by owner and team, merge, leads,
the funnel, activities and reminders to a real local webhook, the organization card,
documents from templates and the spreadsheet import."""

import asyncio
import csv
import io
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from zoneinfo import ZoneInfo

import httpx
import pytest
from openpyxl import Workbook
from sqlalchemy import func, select

from crm_service.adapters import tables
from crm_service.adapters.repositories import ApprovalRequestRepository, DealRepository, OrganizationRepository
from crm_service.config import CrmSettings
from crm_service.entrypoints.app import create_app
from crm_service.service_layer.reminders import send_due_reminders
from infra.users import upsert_user
from tests.support.meanwhile import start_meanwhile

PEOPLE = {"anna": ("sales", "moscow"), "boris": ("sales", "moscow"), "maria": ("manager", "moscow"),
          "petr": ("sales", "spb"), "admin": ("admin", None), "auditor": ("auditor", None)}


@pytest.fixture
async def crm_app(request, backend, databases, broker, tmp_path):
    extra = {}
    if funnel := getattr(request, "param", {}).get("funnel"):  # a company's own funnel
        (tmp_path / "funnel.json").write_text(json.dumps(funnel))
        extra["funnel_file"] = tmp_path / "funnel.json"
    settings = CrmSettings(database_url=databases.url("crm", backend), kafka_bootstrap_servers=broker,
                           files_dir=tmp_path / "files", imports_dir=tmp_path / "imports", **extra)
    app = create_app(settings)
    container = app.state.container
    users = {}
    for name, (role, team) in PEOPLE.items():
        token = f"t-{name}-{uuid.uuid4().hex}"
        user_id = await upsert_user(container.session_factory, tables.users, name=f"{name}-{uuid.uuid4().hex[:4]}",
                                    role=role, token=token)
        if team:
            async with container.session_factory() as session, session.begin():
                await session.execute(tables.user_profiles.insert().values(user_id=user_id, team=team))
        users[name] = {"id": user_id, "headers": {"Authorization": f"Bearer {token}"}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://crm") as client:
        yield client, users, container
    await container.engine.dispose()


async def test_quick_entry_hints_duplicates_and_rights(crm_app):
    client, users, _ = crm_app
    anna = users["anna"]["headers"]
    first = await client.post("/api/organizations", headers=anna, json={
        "name": "ООО «Ромашка»", "inn": "7707083894", "phones": ["+7 900 000-00-00"], "region": "Москва"})
    assert first.status_code == 201
    body = first.json()
    assert body["hints"] and "INN" in body["hints"][0] and body["duplicates"] == []
    assert body["link_text"] == "not yet in the registry"
    second = await client.post("/api/organizations", headers=anna, json={"name": "Ромашка ООО"})
    assert second.status_code == 201  # never blocked
    assert [d["id"] for d in second.json()["duplicates"]] == [body["id"]]
    found = (await client.get("/api/organizations", params={"q": "ромашка"}, headers=anna)).json()
    assert found["total"] == 2
    assert (await client.get("/api/organizations", params={"q": "7707083894"}, headers=anna)).json()["total"] == 1

    edit = {"website": "https://romashka.example"}
    url = f"/api/organizations/{body['id']}"
    assert (await client.patch(url, json=edit, headers=users["petr"]["headers"])).status_code == 403  # other team
    assert (await client.patch(url, json=edit, headers=users["boris"]["headers"])).status_code == 403  # not owner
    assert (await client.patch(url, json=edit, headers=users["auditor"]["headers"])).status_code == 403
    assert (await client.patch(url, json=edit, headers=users["maria"]["headers"])).status_code == 200  # manager
    emptied = await client.patch(url, json={"name": None}, headers=anna)
    assert emptied.status_code == 422 and "name" in emptied.json()["detail"]
    changed = await client.patch(url, json={"notes": "ключевой клиент"}, headers=anna)
    assert changed.status_code == 200 and changed.json()["website"] == "https://romashka.example"

    transfer = {"new_owner_id": users["petr"]["id"], "move_open_deals": True}
    assert (await client.post(f"{url}/transfer", json=transfer, headers=anna)).status_code == 403  # other team
    transfer["new_owner_id"] = users["boris"]["id"]
    assert (await client.post(f"{url}/transfer", json=transfer, headers=users["maria"]["headers"])).status_code \
        == 200


async def test_edits_of_one_organization_at_the_same_moment_all_stay(crm_app):
    """The owner and the team's manager change six fields of one card at once, one field a
    call: every change is kept. On SQLite, where `FOR UPDATE` is no clause at all, the
    calls all read the card as it was and each later save wrote the earlier ones' fields
    back (five of the six were lost)."""
    client, users, _ = crm_app
    created = await client.post("/api/organizations", headers=users["anna"]["headers"], json={"name": "ООО «Клевер»"})
    url = f"/api/organizations/{created.json()['id']}"
    edits = {"website": "https://klever.example", "region": "Тверь", "category": "A", "org_group": "Холдинг",
             "activity_type": "опт", "notes": "ключевой клиент"}
    answers = await asyncio.gather(*(
        client.patch(url, json={field: value}, headers=users["anna" if i % 2 else "maria"]["headers"])
        for i, (field, value) in enumerate(edits.items())))
    assert [a.status_code for a in answers] == [200] * len(edits)
    card = (await client.get(url, headers=users["anna"]["headers"])).json()
    assert {field: card[field] for field in edits} == edits


async def test_merge_moves_everything_to_the_survivor_and_is_an_event(crm_app):
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    keep = (await client.post("/api/organizations", headers=anna, json={"name": "Вектор"})).json()
    dup = (await client.post("/api/organizations", headers=anna, json={"name": "Вектор ООО", "inn": "7707083893"}
                             )).json()
    deal = (await client.post("/api/deals", headers=anna, json={"organization_id": dup["id"], "title": "Поставка",
                                                                 "amount": "1500000.00", "currency": "RUB"})).json()
    await client.post("/api/activities", headers=anna, json={"kind": "call", "subject": "Позвонить",
                                                             "organization_id": dup["id"]})
    merged = await client.post(f"/api/organizations/{dup['id']}/merge", headers=anna, json={"into_id": keep["id"]})
    assert merged.status_code == 200 and merged.json()["inn"] == "7707083893"  # empty field filled, not overwritten
    card = (await client.get(f"/api/organizations/{keep['id']}/card", headers=anna)).json()
    assert [d["id"] for d in card["deals"]] == [deal["id"]]
    assert any(e["kind"] == "activity:call" for e in card["timeline"])
    assert any(e["kind"] == "merged" for e in card["timeline"])
    async with container.session_factory() as session:
        events = await session.scalar(select(func.count()).select_from(tables.outbox).where(
            tables.outbox.c.message_type == "crm.organizations_merged"))
    assert events == 1
    found = (await client.get("/api/organizations", params={"q": "вектор"}, headers=anna)).json()
    assert [o["id"] for o in found["items"]] == [keep["id"]]


async def test_what_is_added_to_a_merged_organization_goes_to_the_one_it_was_merged_into(crm_app):
    """A page opened before a merge still names the duplicate: a deal, a contact, an
    activity or a converted lead added there lands on the survivor, never on the pointer
    (before, each was kept under the merged organization, out of every list and card)."""
    client, users, _ = crm_app
    anna = users["anna"]["headers"]
    keep, dup = [(await client.post("/api/organizations", headers=anna, json={"name": name})).json()
                 for name in ("Вектор", "Вектор ООО")]
    assert (await client.post(f"/api/organizations/{dup['id']}/merge", headers=anna,
                              json={"into_id": keep["id"]})).status_code == 200
    deal = await client.post("/api/deals", headers=anna, json={"organization_id": dup["id"], "title": "Поставка"})
    contact = await client.post("/api/contacts", headers=anna, json={"full_name": "Иван Петров",
                                                                      "organization_id": dup["id"]})
    activity = await client.post("/api/activities", headers=anna, json={"kind": "call", "subject": "Позвонить",
                                                                        "organization_id": dup["id"]})
    lead = (await client.post("/api/leads", headers=anna, json={"title": "Запрос", "company_name": "Другое"})).json()
    converted = await client.post(f"/api/leads/{lead['id']}/convert", headers=anna,
                                  json={"organization_id": dup["id"], "create_contact": False})
    assert [r.status_code for r in (deal, contact, activity, converted)] == [201, 201, 201, 200]
    assert [r.json()["organization_id"] for r in (deal, contact, activity, converted)] == [keep["id"]] * 4
    card = (await client.get(f"/api/organizations/{keep['id']}/card", headers=anna)).json()
    assert sorted(d["id"] for d in card["deals"]) == sorted([deal.json()["id"], converted.json()["deal_id"]])


async def test_a_deal_added_as_its_organization_is_merged_reaches_the_survivor(crm_app, monkeypatch):
    """A deal created for the duplicate at the moment it is merged: the merge moved the
    deals it could see, and the one committed meanwhile stayed behind on the pointer.
    Here the merge is sent after the deal's transaction has read its organization and
    before it inserts the deal, and given a second: it now waits for the deal (the
    organization is read under a lock a merge waits for) and then moves it along."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    keep, dup = [(await client.post("/api/organizations", headers=anna, json={"name": name})).json()
                 for name in ("Клевер", "Клевер ООО")]
    merges = start_meanwhile(monkeypatch, DealRepository, "add", lambda: client.post(
        f"/api/organizations/{dup['id']}/merge", headers=anna, json={"into_id": keep["id"]}))
    deal = await client.post("/api/deals", headers=anna, json={"organization_id": dup["id"], "title": "Поставка"})
    [merged] = await asyncio.gather(*merges)
    assert deal.status_code == 201 and merged.status_code == 200
    async with container.session_factory() as session:
        stored = await session.scalar(select(tables.deals.c.organization_id).where(
            tables.deals.c.id == deal.json()["id"]))
    assert stored == keep["id"]


async def _a_duplicate_with_a_deal(client, headers) -> tuple[dict, dict, dict]:
    """Two organizations, the second a duplicate of the first, and a deal of the duplicate."""
    keep, dup = [(await client.post("/api/organizations", headers=headers, json={"name": name})).json()
                 for name in ("Клевер", "Клевер ООО")]
    deal = (await client.post("/api/deals", headers=headers, json={"organization_id": dup["id"],
                                                                    "title": "Поставка"})).json()
    return keep, dup, deal


@pytest.mark.parametrize("first", ["request", "merge"])
async def test_an_approval_requested_as_its_organization_is_merged_follows_the_survivor(crm_app, monkeypatch, first):
    """A rep requests approval of a deal's document at the moment its organization is
    merged. Before, the request could read the deal's organization just before the
    merge committed and be recorded after it: the request stayed on the pointer (out of
    the survivor's card) and its event, published after the merge's, told the ECM of an
    organization the CRM had already merged away.

    `request` first: the merge is sent after the request has read its document and
    organization and before it is recorded; the merge waits for the request and moves
    it along, and its event follows the request's under the merged organization's key.
    `merge` first: the request is sent once the merge has locked both organizations and
    before it commits; the request waits, then reads the deal on the survivor."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    keep, dup, deal = await _a_duplicate_with_a_deal(client, anna)
    made = await client.post(f"/api/deals/{deal['id']}/documents/generate", headers=anna,
                             json={"template": "commercial_proposal", "doc_type": "proposal"})
    document_id = made.json()["document"]["id"]

    def send_merge():
        return client.post(f"/api/organizations/{dup['id']}/merge", headers=anna, json={"into_id": keep["id"]})

    def send_request():
        return client.post(f"/api/deals/{deal['id']}/approval-requests", headers=anna,
                           json={"document_id": document_id})

    if first == "request":
        meanwhile = start_meanwhile(monkeypatch, ApprovalRequestRepository, "add_unless_open", send_merge)
        requested = await send_request()
        merged = await meanwhile[0]
    else:
        meanwhile = start_meanwhile(monkeypatch, OrganizationRepository, "add_history", send_request)
        merged = await send_merge()
        requested = await meanwhile[0]
    assert requested.status_code == 202 and merged.status_code == 200
    async with container.session_factory() as session:
        stored = await session.scalar(select(tables.approval_requests.c.organization_id).where(
            tables.approval_requests.c.id == requested.json()["id"]))
        events = (await session.execute(
            select(tables.outbox.c.message_type, tables.outbox.c.message_key, tables.outbox.c.body)
            .where(tables.outbox.c.message_type.in_(["crm.approval_requested", "crm.organizations_merged"]))
            .order_by(tables.outbox.c.id))).all()
    assert stored == keep["id"]
    told = [(e.message_type, e.message_key) for e in events]
    sent_for = json.loads(next(e.body for e in events if e.message_type == "crm.approval_requested")
                          )["payload"]["organization"]["id"]
    if first == "request":
        assert told == [("crm.approval_requested", dup["id"]), ("crm.organizations_merged", dup["id"])]
        assert sent_for == dup["id"]  # the ECM hears of it before the merge, which then moves it
    else:
        assert told == [("crm.organizations_merged", dup["id"]), ("crm.approval_requested", keep["id"])]
        assert sent_for == keep["id"]


async def test_a_transfer_of_a_merged_organization_hands_over_the_survivor(crm_app):
    """A page opened before a merge still names the duplicate. Handing it over changed the
    pointer's owner and nothing else: its deals and approvals were on the survivor, and
    the ECM heard of an organization whose approvals had moved. Now the survivor changes
    hands, with its open deals, and the event names it."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    keep, dup, deal = await _a_duplicate_with_a_deal(client, anna)
    assert (await client.post(f"/api/organizations/{dup['id']}/merge", headers=anna,
                              json={"into_id": keep["id"]})).status_code == 200
    moved = await client.post(f"/api/organizations/{dup['id']}/transfer", headers=anna,
                              json={"new_owner_id": users["boris"]["id"], "move_open_deals": True})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["organization_id"], moved.json()["moved_deal_ids"]) == (keep["id"], [deal["id"]])
    card = (await client.get(f"/api/organizations/{keep['id']}", headers=anna)).json()
    assert card["owner_id"] == users["boris"]["id"]
    async with container.session_factory() as session:
        key = await session.scalar(select(tables.outbox.c.message_key).where(
            tables.outbox.c.message_type == "crm.responsibility_transferred"))
    assert key == keep["id"]


async def test_lead_conversion_links_an_existing_organization_and_never_asks(crm_app):
    client, users, _ = crm_app
    anna = users["anna"]["headers"]
    org = (await client.post("/api/organizations", headers=anna, json={"name": "Сбербанк", "inn": "7707083893"})
           ).json()
    lead = (await client.post("/api/leads", headers=anna, json={
        "title": "Запрос на поставку", "company_name": "ПАО Сбербанк", "person_name": "Иван Петров",
        "phones": ["+7 900 111-22-33"], "inn": "7707083893"})).json()
    result = (await client.post(f"/api/leads/{lead['id']}/convert", headers=anna, json={})).json()
    assert result["linked_existing_organization"] and result["organization_id"] == org["id"]
    assert result["contact_id"] and result["deal_id"]
    again = await client.post(f"/api/leads/{lead['id']}/convert", headers=anna, json={})
    assert again.status_code == 422
    spam = (await client.post("/api/leads", headers=anna, json={"title": "Реклама"})).json()
    url = f"/api/leads/{spam['id']}/disqualify"
    assert (await client.post(url, headers=users["boris"]["headers"], json={"reason": "спам"})).status_code == 403
    closed = await client.post(url, headers=anna, json={"reason": "спам"})
    assert closed.status_code == 200 and closed.json()["status"] == "disqualified"
    assert (await client.post(f"/api/leads/{spam['id']}/convert", headers=anna, json={})).status_code == 422
    bare = (await client.post("/api/leads", headers=anna, json={"title": "Звонок с выставки"})).json()
    only_deal = (await client.post(f"/api/leads/{bare['id']}/convert", headers=anna, json={})).json()
    assert only_deal["organization_id"] and only_deal["deal_id"] and only_deal["contact_id"] is None


async def test_funnel_stage_history_activities_my_day_and_reminders_to_a_webhook(crm_app):
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    org = (await client.post("/api/organizations", headers=anna, json={"name": "Альфа"})).json()
    deal = (await client.post("/api/deals", headers=anna, json={"organization_id": org["id"], "title": "Лицензии"})
            ).json()
    url = f"/api/deals/{deal['id']}"
    assert (await client.patch(url, headers=anna, json={"stage": "bogus"})).status_code == 422
    moved = (await client.patch(url, headers=anna, json={"stage": "proposal"})).json()
    assert moved["stage"] == "proposal" and moved["probability"] == 50
    won = (await client.patch(url, headers=anna, json={"stage": "won"})).json()
    assert won["closed_at"] is not None
    stages = (await client.get(f"{url}/stages", headers=anna)).json()
    assert [(s["from_stage"], s["to_stage"]) for s in stages] == [(None, "new"), ("new", "proposal"),
                                                                  ("proposal", "won")]
    board = (await client.get("/api/deals/board", headers=anna)).json()
    assert [d["id"] for d in board["won"]] == [deal["id"]] and list(board)[:2] == ["new", "qualified"]

    now = datetime.now(timezone.utc)
    overdue = (await client.post("/api/activities", headers=anna, json={
        "kind": "task", "subject": "Отправить КП", "deal_id": deal["id"],
        "due_at": (now - timedelta(hours=2)).isoformat()})).json()
    await client.post("/api/activities", headers=anna, json={
        "kind": "meeting", "subject": "Встреча", "organization_id": org["id"],
        "due_at": (now + timedelta(minutes=5)).isoformat()})
    nobody = await client.post("/api/activities", headers=anna, json={"kind": "call", "subject": "x",
                                                                      "contact_id": "missing"})
    assert nobody.status_code == 404
    naive = await client.post("/api/activities", headers=anna, json={"kind": "call", "subject": "x",
                                                                     "due_at": "2026-12-07T15:00:00"})
    assert naive.status_code == 422 and "timezone" in naive.text  # was a 500 at the database
    day = (await client.get("/api/my-day", headers=anna)).json()
    assert [a["id"] for a in day["overdue"]] == [overdue["id"]]
    assert overdue["organization_id"] == org["id"]  # taken from the deal

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{server.server_port}/hook"
        assert (await client.put("/api/me/notify-hook", headers=anna, json={"notify_hook": hook})).status_code == 200
        from infra import business_day

        business_day.use_zone("Europe/Moscow")  # the reminder gives the time on the company's clock
        try:
            sent = await send_due_reminders(container.uow, container.settings)
        finally:
            business_day.use_zone("UTC")
        assert sorted(s["delivery"] for s in sent) == ["sent", "sent"]
        assert await send_due_reminders(container.uow, container.settings) == []  # once per activity
    finally:
        server.shutdown()
    assert len(received) == 2 and all("due" in r["text"] for r in received)
    meeting = next(r["text"] for r in received if "Встреча" in r["text"])
    moscow = (now + timedelta(minutes=5)).astimezone(ZoneInfo("Europe/Moscow"))
    assert meeting.endswith(f"due {moscow:%Y-%m-%d %H:%M} MSK"), meeting  # it used to give UTC
    notes = (await client.get("/api/notifications", headers=anna)).json()
    assert sum(n["kind"] == "activity_due" for n in notes) == 2


OWN_FUNNEL = {"stages": ["lead", "offer", "signed", "dropped"], "closed": ["signed", "dropped"],
              "probability": {"lead": 5, "offer": 40, "signed": 100, "dropped": 0}}


@pytest.mark.parametrize("crm_app", [{"funnel": OWN_FUNNEL}], indirect=True)
async def test_a_companys_own_funnel_is_where_deals_start_and_what_closes_them(crm_app):
    """Deals started at "new" and only "won"/"lost" counted as closed whatever the funnel
    said: with these stages a new deal vanished from the board, and a transfer moved
    signed deals to the new manager."""
    client, users, _ = crm_app
    anna = users["anna"]["headers"]
    org = (await client.post("/api/organizations", headers=anna, json={"name": "Свой процесс"})).json()
    opened = (await client.post("/api/deals", headers=anna, json={"organization_id": org["id"], "title": "Открытая"})
              ).json()
    assert (opened["stage"], opened["probability"]) == ("lead", 5)
    signed = (await client.post("/api/deals", headers=anna, json={"organization_id": org["id"], "title": "Подписана",
                                                                   "probability": 60})).json()
    assert (signed["stage"], signed["probability"]) == ("lead", 60)  # a given probability stays
    closed = (await client.patch(f"/api/deals/{signed['id']}", headers=anna, json={"stage": "signed"})).json()
    assert closed["closed_at"] is not None
    board = (await client.get("/api/deals/board", headers=anna)).json()
    assert list(board) == OWN_FUNNEL["stages"]
    assert [d["id"] for d in board["lead"]] == [opened["id"]] and [d["id"] for d in board["signed"]] == [signed["id"]]

    lead = (await client.post("/api/leads", headers=anna, json={"title": "Заявка", "company_name": "Лид и сделка"})
            ).json()
    converted = (await client.post(f"/api/leads/{lead['id']}/convert", headers=anna, json={})).json()
    from_lead = (await client.get(f"/api/deals/{converted['deal_id']}", headers=anna)).json()
    assert (from_lead["stage"], from_lead["probability"]) == ("lead", 5)

    moved = (await client.post(f"/api/organizations/{org['id']}/transfer", headers=anna,
                               json={"new_owner_id": users["boris"]["id"], "move_open_deals": True})).json()
    assert moved["moved_deal_ids"] == [opened["id"]]
    owners = {d: (await client.get(f"/api/deals/{d}", headers=anna)).json()["owner_id"]
              for d in (opened["id"], signed["id"])}
    assert owners == {opened["id"]: users["boris"]["id"], signed["id"]: users["anna"]["id"]}


async def test_documents_from_a_template_are_attached_to_the_deal(crm_app):
    client, users, _ = crm_app
    anna = users["anna"]["headers"]
    org = (await client.post("/api/organizations", headers=anna, json={"name": "ООО «Бета»", "inn": "7707083893"})
           ).json()
    deal = (await client.post("/api/deals", headers=anna, json={"organization_id": org["id"], "title": "Сервис",
                                                                 "amount": "250000.50"})).json()
    assert "commercial_proposal" in (await client.get("/api/document-templates", headers=anna)).json()
    made = await client.post(f"/api/deals/{deal['id']}/documents/generate", headers=anna,
                             json={"template": "commercial_proposal", "doc_type": "proposal"})
    assert made.status_code == 201, made.text
    doc = made.json()["document"]
    content = (await client.get(f"/api/documents/{doc['id']}/content", headers=anna)).text
    assert "ООО «Бета»" in content and "250 000.50" in content and "7707083893" in content
    bad = await client.post(f"/api/deals/{deal['id']}/documents/generate", headers=anna, json={"template": "nope"})
    assert bad.status_code == 422


async def _wait_import(client, headers, import_id, status):
    for _ in range(300):
        job = (await client.get(f"/api/imports/{import_id}", headers=headers)).json()
        if job["status"] in (status, "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import stayed {job['status']}")


async def test_spreadsheet_import_dry_run_apply_report_and_idempotent_reimport(crm_app):
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    await client.post("/api/organizations", headers=anna, json={"name": "Ромашка"})  # an existing look-alike
    rows = [["Наименование", "ИНН", "КПП", "Телефон", "Регион", "Контактное лицо"],
            ["ООО «Ромашка»", "", "", "+7 900 1", "Москва", "Анна Иванова"],
            ["Альфа", "7707083893", "773601001", "", "Казань", ""],
            ["", "7736050003", "", "", "", ""],  # no name: an error row, the import goes on
            ["Альфа (повтор)", "7707083893", "773601001", "", "", ""],  # same key as the row above
            ["=HYPERLINK(\"x\")", "", "", "", "", ""],  # a formula is not a name
            ["Гамма", "12345", "", "", "Тверь", ""],
            ["Дельта " + "очень длинное название " * 40, "", "", "", "", ""]]  # longer than the column
    out = io.StringIO()
    csv.writer(out, delimiter=";").writerows(rows)
    data = out.getvalue().encode("cp1251")
    up = await client.post("/api/imports", headers=anna, files={"file": ("orgs.csv", data, "text/csv")})
    assert up.status_code == 201, up.text
    job = up.json()
    assert job["mapping"] == {"0": "name", "1": "inn", "2": "kpp", "3": "phone", "4": "region", "5": "contact_name"}
    assert (await client.post(f"/api/imports/{job['id']}/apply", headers=anna)).status_code == 409  # dry run first
    bad = await client.put(f"/api/imports/{job['id']}/mapping", headers=anna, json={"mapping": {"1": "inn"}})
    assert bad.status_code == 422
    await client.post(f"/api/imports/{job['id']}/dry-run", headers=anna)
    dry = await _wait_import(client, anna, job["id"], "dry_run")
    assert dry["counts"] == {"create": 3, "update": 0, "unchanged": 0, "possible_duplicate": 1,
                             "duplicate_in_file": 1, "error": 2}
    async with container.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(tables.organizations)) == 1  # nothing written
    await client.post(f"/api/imports/{job['id']}/apply", headers=anna)
    applied = await _wait_import(client, anna, job["id"], "applied")
    assert applied["counts"] == dry["counts"]
    report = (await client.get(applied["report_url"], headers=anna)).content.decode("utf-8-sig")
    lines = list(csv.DictReader(io.StringIO(report)))
    assert [(r["row"], r["outcome"]) for r in lines] == [
        ("2", "possible_duplicate"), ("3", "create"), ("4", "error"), ("5", "duplicate_in_file"), ("6", "error"),
        ("7", "create"), ("8", "create")]
    assert "INN" in lines[5]["hints"]
    async with container.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(tables.organizations)) == 5
        assert await session.scalar(select(func.count()).select_from(tables.contacts)) == 1

    # The same file again: found by its keys, nothing duplicated.
    again = (await client.post("/api/imports", headers=anna, files={"file": ("orgs.csv", data, "text/csv")})).json()
    await client.post(f"/api/imports/{again['id']}/dry-run", headers=anna)
    await _wait_import(client, anna, again["id"], "dry_run")
    await client.post(f"/api/imports/{again['id']}/apply", headers=anna)
    second = await _wait_import(client, anna, again["id"], "applied")
    assert second["counts"]["unchanged"] == 4 and second["counts"]["create"] == 0
    async with container.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(tables.organizations)) == 5

    # XLSX with English headers, numbers where ids are.
    book = Workbook()
    sheet = book.active
    sheet.append(["Company", "Tax ID", "E-mail"])
    sheet.append(["Delta LLC", 7707083893, "info@delta.example"])
    buffer = io.BytesIO()
    book.save(buffer)
    xlsx = (await client.post("/api/imports", headers=anna, files={"file": ("d.xlsx", buffer.getvalue(), "x")})).json()
    assert xlsx["mapping"] == {"0": "name", "1": "inn", "2": "email"}
    await client.post(f"/api/imports/{xlsx['id']}/dry-run", headers=anna)
    result = await _wait_import(client, anna, xlsx["id"], "dry_run")
    assert result["counts"]["possible_duplicate"] == 1  # same INN as «Альфа»

    empty = await client.post("/api/imports", headers=anna, files={"file": ("e.csv", b"", "text/csv")})
    assert empty.status_code == 422
    wrong = await client.post("/api/imports", headers=anna, files={"file": ("e.pdf", b"%PDF", "x")})
    assert wrong.status_code == 422


async def test_the_search_by_name_folds_case_in_any_script_and_takes_wildcards_as_letters(crm_app):
    """A rep types "рога" and expects "Рога и копыта". The search compared the text with
    the name by ILIKE, which folds only ASCII letters on SQLite (`make run`'s database):
    lower-case Cyrillic found nothing there, and `%` or `_` matched every name. It now
    also reads the normalised name, word by word, written by every path that names an
    organization: quick entry, an edit, a lead's conversion, an import and its update."""
    client, users, _ = crm_app
    anna = users["anna"]["headers"]
    created = {name: (await client.post("/api/organizations", headers=anna, json={"name": name})).json()["id"]
               for name in ("Рога и копыта", "ООО «Ёлка»", "100% Fruit", "A_B Trading", "AxB Trading", "Вектор")}
    renamed = await client.patch(f"/api/organizations/{created['Вектор']}", headers=anna, json={"name": "Тетра"})
    assert renamed.status_code == 200
    lead = (await client.post("/api/leads", headers=anna,
                              json={"title": "Запрос", "company_name": "Гамма Плюс"})).json()
    converted = await client.post(f"/api/leads/{lead['id']}/convert", headers=anna, json={"create_contact": False})
    assert converted.status_code == 200, converted.text

    async def imported(name: str) -> None:
        out = io.StringIO()
        csv.writer(out, delimiter=";").writerows([["Наименование", "ИНН"], [name, "7707083893"]])
        job = (await client.post("/api/imports", headers=anna,
                                 files={"file": ("orgs.csv", out.getvalue().encode(), "text/csv")})).json()
        await client.post(f"/api/imports/{job['id']}/dry-run", headers=anna)
        await _wait_import(client, anna, job["id"], "dry_run")
        await client.post(f"/api/imports/{job['id']}/apply", headers=anna)
        await _wait_import(client, anna, job["id"], "applied")
    await imported("Альфа")
    await imported("Бета Холдинг")  # the same INN: the row updates the organization's name

    async def found(q: str) -> list[str]:
        answer = await client.get("/api/organizations", params={"q": q}, headers=anna)
        assert answer.status_code == 200, answer.text
        return sorted(o["name"] for o in answer.json()["items"])
    assert await found("рога") == ["Рога и копыта"]
    assert await found("КОПЫТА рога") == ["Рога и копыта"]  # any order
    assert await found("ооо рога") == ["Рога и копыта"]  # the legal form is no word of the name
    assert await found("елка") == ["ООО «Ёлка»"]  # ё and е alike
    assert await found("%") == ["100% Fruit"]
    assert await found("_") == ["A_B Trading"]
    assert await found("a_b") == ["A_B Trading"]
    assert await found("trading") == ["A_B Trading", "AxB Trading"]
    assert await found("тетра") == ["Тетра"] and await found("вектор") == []
    assert await found("гамма") == ["Гамма Плюс"]
    assert await found("холдинг") == ["Бета Холдинг"] and await found("альфа") == []
    assert await found("ООО") == ["ООО «Ёлка»"]  # nothing but a legal form: the name as typed


async def test_the_organizations_list_is_alphabetical_whatever_the_case_quotes_or_legal_form(crm_app):
    """The list was ordered by the name's characters: a name typed in lower case came
    after every capitalised one, a quoted one before all, "ООО «Бета»" under О."""
    client, users, _ = crm_app
    anna = users["anna"]["headers"]
    for name in ("яблоко", "ООО «Бета»", '"Вега"', "Альфа", "ёж", "Дельта ООО"):
        assert (await client.post("/api/organizations", headers=anna, json={"name": name})).status_code == 201
    listed = (await client.get("/api/organizations", headers=anna)).json()["items"]
    assert [o["name"] for o in listed] == ["Альфа", "ООО «Бета»", '"Вега"', "Дельта ООО", "ёж", "яблоко"]
    second = (await client.get("/api/organizations", headers=anna, params={"limit": 2, "offset": 2})).json()["items"]
    assert [o["name"] for o in second] == ['"Вега"', "Дельта ООО"]


async def test_a_reimport_of_a_merged_organization_fills_the_survivor_and_overwrites_nothing(crm_app):
    """Organizations imported, one of them merged into a card a rep kept, then the same
    export imported again with more in it: the merged one's row updated the merged
    pointer, which no list or card shows. Now it goes to the survivor as the merge
    itself did: empty fields filled, phones added, the survivor's own values kept."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]

    async def imported(rows) -> list[dict]:
        out = io.StringIO()
        csv.writer(out, delimiter=";").writerows([["Наименование", "ИНН", "Регион", "Телефон"], *rows])
        job = (await client.post("/api/imports", headers=anna,
                                 files={"file": ("orgs.csv", out.getvalue().encode(), "text/csv")})).json()
        await client.post(f"/api/imports/{job['id']}/dry-run", headers=anna)
        await _wait_import(client, anna, job["id"], "dry_run")
        await client.post(f"/api/imports/{job['id']}/apply", headers=anna)
        applied = await _wait_import(client, anna, job["id"], "applied")
        report = (await client.get(applied["report_url"], headers=anna)).content.decode("utf-8-sig")
        return list(csv.DictReader(io.StringIO(report)))

    first = await imported([["Альфа", "7707083893", "", "+7 900 1"]])
    imported_id = first[0]["organization_id"]
    kept = (await client.post("/api/organizations", headers=anna, json={"name": "Альфа-Групп",
                                                                          "phones": ["+7 900 2"]})).json()
    merged = await client.post(f"/api/organizations/{imported_id}/merge", headers=anna, json={"into_id": kept["id"]})
    assert merged.status_code == 200
    again = await imported([["Альфа Холдинг", "7707083893", "Казань", "+7 900 3"]])
    assert [(r["outcome"], r["organization_id"]) for r in again] == [("update", kept["id"])]
    assert "was merged into this one" in again[0]["message"]
    card = (await client.get(f"/api/organizations/{kept['id']}", headers=anna)).json()
    assert (card["name"], card["inn"], card["region"]) == ("Альфа-Групп", "7707083893", "Казань")
    assert card["phones"] == ["+7 900 2", "+7 900 1", "+7 900 3"]
    async with container.session_factory() as session:
        pointer = (await session.execute(select(tables.organizations).where(
            tables.organizations.c.id == imported_id))).mappings().one()
    assert (pointer["name"], pointer["region"]) == ("Альфа", None)


async def test_my_day_is_the_companys_calendar_day(crm):
    """At 01:30 in Moscow on the 7th (22:30 UTC on the 6th) a rep's day is the 7th: a
    meeting at 23:00 Moscow time is today's, one at 00:30 on the 8th is not. In UTC, the
    day is still the 6th, and the 23:00 meeting is tomorrow's."""
    from crm_service.domain.model import Activity
    from crm_service.service_layer.sales import my_day
    from infra import business_day

    now = datetime(2026, 12, 6, 22, 30, tzinfo=timezone.utc)
    due = {"late evening": datetime(2026, 12, 7, 20, 0, tzinfo=timezone.utc),  # 23:00 on the 7th, Moscow
           "after midnight": datetime(2026, 12, 7, 21, 30, tzinfo=timezone.utc),  # 00:30 on the 8th
           "overdue": datetime(2026, 12, 6, 20, 0, tzinfo=timezone.utc)}
    async with crm.uow() as uow:
        for subject, at in due.items():
            await uow.activities.add(Activity(id=str(uuid.uuid4()), kind="meeting", subject=subject,
                                              owner_id="rep-msk", created_at=now, due_at=at))
        await uow.commit()

    def listed(day):
        return day["date"], [a["subject"] for a in day["today"]], [a["subject"] for a in day["overdue"]]

    business_day.use_zone("Europe/Moscow")
    try:
        async with crm.uow() as uow:
            moscow = await my_day(uow, user_id="rep-msk", now=now, unanswered_after=timedelta(minutes=15))
    finally:
        business_day.use_zone("UTC")
    async with crm.uow() as uow:
        utc = await my_day(uow, user_id="rep-msk", now=now, unanswered_after=timedelta(minutes=15))
    assert listed(moscow) == ("2026-12-07", ["late evening"], ["overdue"])
    assert listed(utc) == ("2026-12-06", [], ["overdue"])


async def test_the_pages_read_and_show_times_on_the_companys_clock(crm_app):
    """A rep in Moscow types 15:00 into the activity form (a datetime-local field has no
    zone): that is 12:00 UTC, stored as such, and shown again as 15:00 on the card and in
    my day. It used to be stored as 15:00 UTC, its reminder three hours late."""
    from infra import business_day

    client, users, container = crm_app
    anna = users["anna"]
    org = (await client.post("/api/organizations", headers=anna["headers"], json={"name": "Часовой пояс"})).json()
    token = anna["headers"]["Authorization"].removeprefix("Bearer ")
    business_day.use_zone("Europe/Moscow")
    try:
        added = await client.post(f"/ui/organizations/{org['id']}/activities", cookies={"session": token},
                                  data={"kind": "meeting", "subject": "Встреча в 15:00", "due_at": "2099-12-07T15:00"})
        assert added.status_code == 303, added.text
        async with container.session_factory() as session:
            due = await session.scalar(select(tables.activities.c.due_at)
                                       .where(tables.activities.c.organization_id == org["id"]))
        assert due == datetime(2099, 12, 7, 12, 0, tzinfo=timezone.utc)
        card = await client.get(f"/ui/organizations/{org['id']}", cookies={"session": token})
        assert "2099-12-07 15:00" in card.text and "2099-12-07 12:00" not in card.text
        refused = await client.post(f"/ui/organizations/{org['id']}/activities", cookies={"session": token},
                                    data={"kind": "call", "subject": "x", "due_at": "tomorrow-ish"})
        assert refused.status_code == 303 and "not%20understood" in refused.headers["location"]
    finally:
        business_day.use_zone("UTC")


async def test_the_deal_page_attaches_fills_and_sends_for_approval_with_the_apis_rights(crm_app):
    """Sales could not send a document for approval from the pages at all (the API only).
    The deal page does it with the API's rules: the owner, their manager or an admin; a
    second click while the approval is open starts nothing; a colleague reads only."""
    client, users, container = crm_app

    def cookie(name: str) -> dict:
        return {"session": users[name]["headers"]["Authorization"].removeprefix("Bearer ")}

    org = (await client.post("/api/organizations", headers=users["anna"]["headers"], json={"name": "Сделка страницей"})
           ).json()
    refused = await client.post(f"/ui/organizations/{org['id']}/deals", cookies=cookie("anna"),
                                data={"title": "Поставка", "amount": "12,345.6.7"})
    assert refused.status_code == 303 and "amount%20not%20understood" in refused.headers["location"]
    created = await client.post(f"/ui/organizations/{org['id']}/deals", cookies=cookie("anna"),
                                data={"title": "Поставка", "amount": "1 200 000,50", "currency": "rub"})
    assert created.status_code == 303 and created.headers["location"].endswith("?done=created")
    deal_url = created.headers["location"].split("?")[0]
    deal_id = deal_url.rsplit("/", 1)[1]
    deal = (await client.get(f"/api/deals/{deal_id}", headers=users["anna"]["headers"])).json()
    assert (deal["title"], deal["amount"], deal["currency"], deal["stage"]) == ("Поставка", "1200000.50", "RUB", "new")

    bad_type = await client.post(f"{deal_url}/documents", cookies=cookie("anna"), data={"doc_type": "Договор!"},
                                 files={"file": ("contract.pdf", b"%PDF-1.4 contract", "application/pdf")})
    assert bad_type.status_code == 303 and "document%20type" in bad_type.headers["location"]
    empty = await client.post(f"{deal_url}/documents", cookies=cookie("anna"), data={"doc_type": "contract"},
                              files={"file": ("empty.pdf", b"", "application/pdf")})
    assert empty.status_code == 303 and "error=" in empty.headers["location"]
    stranger = await client.post(f"{deal_url}/documents", cookies=cookie("petr"), data={"doc_type": "contract"},
                                 files={"file": ("contract.pdf", b"%PDF-1.4 contract", "application/pdf")})
    assert stranger.status_code == 303 and "error=" in stranger.headers["location"]  # another team's deal
    uploaded = await client.post(f"{deal_url}/documents", cookies=cookie("anna"), data={"doc_type": "contract"},
                                 files={"file": ("../../contract.pdf", b"%PDF-1.4 contract", "application/pdf")})
    assert uploaded.headers["location"].endswith("?done=uploaded")
    documents = (await client.get(f"/api/deals/{deal_id}/documents", headers=users["petr"]["headers"])).json()
    assert [(d["filename"], d["doc_type"], d["approval"], d["may_request"]) for d in documents] == [
        ("contract.pdf", "contract", None, True)]
    document_id = documents[0]["id"]

    download = await client.get(f"/ui/documents/{document_id}", cookies=cookie("petr"))
    assert download.content == b"%PDF-1.4 contract"
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.headers["x-content-type-options"] == "nosniff"

    page = (await client.get(deal_url, cookies=cookie("petr"))).text
    assert "Поставка" in page and "request-approval" not in page and "upload-form" not in page  # reads only
    assert (await client.post(f"{deal_url}/approval-requests", cookies=cookie("petr"),
                              data={"document_id": document_id})).headers["location"].startswith(f"{deal_url}?error=")
    assert (await client.post(f"{deal_url}/approval-requests", cookies=cookie("auditor"),
                              data={"document_id": document_id})).status_code == 403
    page = (await client.get(deal_url, cookies=cookie("anna"))).text
    assert "request-approval" in page and "upload-form" in page
    for _ in range(2):  # a double click
        sent = await client.post(f"{deal_url}/approval-requests", cookies=cookie("maria"),  # anna's manager
                                 data={"document_id": document_id})
        assert sent.headers["location"].endswith("?done=requested")
    async with container.session_factory() as session:
        requests = (await session.execute(select(tables.approval_requests.c.status).where(
            tables.approval_requests.c.deal_id == deal_id))).scalars().all()
        events = await session.scalar(select(func.count()).select_from(tables.outbox).where(
            tables.outbox.c.message_type == "crm.approval_requested", tables.outbox.c.body.contains(deal_id)))
    assert requests == ["requested"] and events == 1
    documents = (await client.get(f"/api/deals/{deal_id}/documents", headers=users["anna"]["headers"])).json()
    assert documents[0]["approval"]["status"] == "requested" and documents[0]["may_request"] is False
    page = (await client.get(deal_url, cookies=cookie("anna"))).text
    assert "request-approval" not in page and "requested" in page

    generated = await client.post(f"{deal_url}/documents/generate", cookies=cookie("anna"),
                                  data={"template": "contract", "doc_type": "contract", "request_approval": "1"})
    assert generated.headers["location"].endswith("?done=requested")
    documents = (await client.get(f"/api/deals/{deal_id}/documents", headers=users["anna"]["headers"])).json()
    assert len(documents) == 2 and documents[0]["filename"].startswith("contract-")
    assert documents[0]["approval"]["status"] == "requested"
    unknown = await client.post(f"{deal_url}/documents/generate", cookies=cookie("anna"),
                                data={"template": "missing", "doc_type": "contract"})
    assert "unknown%20template" in unknown.headers["location"]

    moved = await client.post(f"{deal_url}/stage", cookies=cookie("anna"), data={"stage": "proposal", "back": "deal"})
    assert moved.headers["location"] == deal_url
    card = (await client.get(f"/ui/organizations/{org['id']}", cookies=cookie("anna"))).text
    assert f'href="{deal_url}">Поставка</a>' in card  # the deal column of the approvals, and the deals list
    # A refusal on a page is a page that says what went wrong (it was the API's JSON); the API keeps JSON.
    missing = await client.get("/ui/deals/missing", cookies=cookie("anna"))
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "deal missing not found" in missing.text
    untitled = await client.post(f"/ui/organizations/{org['id']}/deals", cookies=cookie("anna"), data={"amount": "1"})
    assert untitled.status_code == 422 and untitled.headers["content-type"].startswith("text/html")
    assert "title: Field required" in untitled.text
    api_refusal = await client.post("/api/deals", headers=users["anna"]["headers"], json={})
    assert api_refusal.status_code == 422 and api_refusal.json()["detail"][0]["loc"] == ["body", "organization_id"]
    assert (await client.get("/api/deals/missing/documents", headers=users["anna"]["headers"])).status_code == 404


async def test_the_card_edits_the_organization_with_the_apis_limits_and_rights(crm_app):
    """A rep completes a record quick-entered on the run (only the API could change it)."""
    client, users, _ = crm_app
    org = (await client.post("/api/organizations", headers=users["anna"]["headers"],
                             json={"name": "Наспех", "region": "Тверь", "phones": ["+7 900 000-00-01"]})).json()
    url = f"/ui/organizations/{org['id']}"
    session = {"session": users["anna"]["headers"]["Authorization"].removeprefix("Bearer ")}
    card = (await client.get(url, cookies=session)).text
    assert 'id="edit-form"' in card and "+7 900 000-00-01</textarea>" in card
    edited = await client.post(f"{url}/edit", cookies=session, data={
        "name": " ООО «Наспех» ", "inn": "7707083893", "kpp": "773601001", "region": "", "country": "ru",
        "phones": "+7 900 000-00-01\n+7 900 000-00-02; ", "emails": "", "notes": "реквизиты из письма"})
    assert edited.status_code == 303 and edited.headers["location"] == f"{url}?done=edited"
    after = (await client.get(f"/api/organizations/{org['id']}", headers=users["anna"]["headers"])).json()
    assert (after["name"], after["inn"], after["kpp"], after["region"], after["country"], after["phones"],
            after["notes"]) == ("ООО «Наспех»", "7707083893", "773601001", None, "RU",
                                ["+7 900 000-00-01", "+7 900 000-00-02"], "реквизиты из письма")
    history = (await client.get(f"/api/organizations/{org['id']}/history", headers=users["anna"]["headers"])).json()
    assert history[-1]["kind"] == "edited"

    wrong = await client.post(f"{url}/edit", cookies=session, data={"name": "ООО «Наспех»", "country": "Russia"})
    assert wrong.status_code == 303 and "country" in wrong.headers["location"]
    emptied = await client.post(f"{url}/edit", cookies=session, data={"name": "  "})
    assert "error=" in emptied.headers["location"]
    stranger = await client.post(f"{url}/edit", data={"name": "Чужое"},
                                 cookies={"session": users["petr"]["headers"]["Authorization"].removeprefix("Bearer ")})
    assert "error=" in stranger.headers["location"]
    still = (await client.get(f"/api/organizations/{org['id']}", headers=users["anna"]["headers"])).json()
    assert (still["name"], still["country"]) == ("ООО «Наспех»", "RU")


async def test_the_pages_capture_and_convert_leads_add_contacts_and_merge_duplicates(crm_app):
    """Leads, contacts and merges were the API's only; the pages now do them with the API's
    rules: a lead converts in one action (an existing organization is used when its INN
    matches), a merge needs its box ticked and moves the deals to the survivor."""
    client, users, container = crm_app

    def cookie(name: str) -> dict:
        return {"session": users[name]["headers"]["Authorization"].removeprefix("Bearer ")}

    anna = users["anna"]["headers"]
    known = (await client.post("/api/organizations", headers=anna, json={"name": "Известная", "inn": "7736050003"})
             ).json()
    created = await client.post("/ui/leads", cookies=cookie("anna"), data={
        "title": "Хотят 20 лицензий", "company_name": "ООО Известная", "person_name": "Ирина Лидова",
        "phones": "+7 900 111-11-11", "inn": "7736050003", "source": "сайт"})
    assert created.headers["location"] == "/ui/leads?done=created"
    assert (await client.post("/ui/leads", cookies=cookie("anna"), data={"title": " "})).headers[
        "location"].startswith("/ui/leads?error=")
    page = (await client.get("/ui/leads", cookies=cookie("anna"))).text
    assert "Хотят 20 лицензий" in page and "convert-form" in page
    (lead,) = [row for row in (await client.get("/api/leads", headers=anna)).json()
               if row["title"] == "Хотят 20 лицензий"]
    assert "convert-form" not in (await client.get("/ui/leads", cookies=cookie("auditor"))).text
    assert "error=" in (await client.post(f"/ui/leads/{lead['id']}/convert", cookies=cookie("petr"),
                                          data={"create_deal": "1"})).headers["location"]  # another team's
    converted = await client.post(f"/ui/leads/{lead['id']}/convert", cookies=cookie("anna"),
                                  data={"deal_title": "Лицензии", "create_deal": "1", "create_contact": "1"})
    assert converted.status_code == 303 and converted.headers["location"].endswith("?done=converted_existing")
    deal_id = converted.headers["location"].split("?")[0].rsplit("/", 1)[1]
    deal = (await client.get(f"/api/deals/{deal_id}", headers=anna)).json()
    assert (deal["title"], deal["organization_id"]) == ("Лицензии", known["id"])
    contacts = (await client.get(f"/api/organizations/{known['id']}/contacts", headers=anna)).json()
    assert [c["full_name"] for c in contacts] == ["Ирина Лидова"]
    again = await client.post(f"/ui/leads/{lead['id']}/convert", cookies=cookie("anna"), data={})
    assert "already%20converted" in again.headers["location"]

    other = (await client.post("/api/leads", headers=anna, json={"title": "Спам"})).json()
    assert (await client.post(f"/ui/leads/{other['id']}/disqualify", cookies=cookie("anna"),
                              data={"reason": "не клиент"})).headers["location"] == "/ui/leads?done=disqualified"
    assert "не клиент" in (await client.get("/ui/leads?status=disqualified", cookies=cookie("anna"))).text

    added = await client.post(f"/ui/organizations/{known['id']}/contacts", cookies=cookie("anna"), data={
        "full_name": "Пётр Бухгалтеров", "position": "главный бухгалтер", "phones": "+7 900 222-22-22",
        "emails": "buh@example.com; buh2@example.com"})
    assert added.headers["location"].endswith("?done=contact")
    contacts = (await client.get(f"/api/organizations/{known['id']}/contacts", headers=anna)).json()
    assert [(c["full_name"], c["emails"]) for c in contacts if c["position"]] == [
        ("Пётр Бухгалтеров", ["buh@example.com", "buh2@example.com"])]
    too_long = await client.post(f"/ui/organizations/{known['id']}/contacts", cookies=cookie("anna"),
                                 data={"full_name": "x" * 301})
    assert too_long.status_code == 422 and "full_name: String should have at most 300 characters" in too_long.text

    twin = (await client.post("/api/organizations", headers=anna, json={"name": "Известная ООО", "region": "Тула"})
            ).json()
    card = (await client.get(f"/ui/organizations/{twin['id']}", cookies=cookie("anna"))).text
    assert "merge-form" in card and f'value="{known["id"]}"' in card
    twin_deal = (await client.post("/api/deals", headers=anna, json={"organization_id": twin["id"], "title": "Ещё"})
                 ).json()
    unconfirmed = await client.post(f"/ui/organizations/{twin['id']}/merge", cookies=cookie("anna"),
                                    data={"into_id": known["id"]})
    assert "tick%20the%20box" in unconfirmed.headers["location"]
    merged = await client.post(f"/ui/organizations/{twin['id']}/merge", cookies=cookie("anna"),
                               data={"into_id": known["id"], "confirm": "1"})
    assert merged.headers["location"] == f"/ui/organizations/{known['id']}?done=merged"
    moved = (await client.get(f"/api/deals/{twin_deal['id']}", headers=anna)).json()
    survivor = (await client.get(f"/api/organizations/{known['id']}", headers=anna)).json()
    assert moved["organization_id"] == known["id"] and survivor["region"] == "Тула"


async def test_my_day_sets_where_reminders_also_go(crm_app):
    client, users, container = crm_app
    session = {"session": users["anna"]["headers"]["Authorization"].removeprefix("Bearer ")}

    async def stored():
        async with container.session_factory() as db:
            return await db.scalar(select(tables.user_profiles.c.notify_hook)
                                   .where(tables.user_profiles.c.user_id == users["anna"]["id"]))

    saved = await client.post("/ui/me/notify-hook", cookies=session, data={"notify_hook": " mailto:anna@example.com "})
    assert saved.headers["location"] == "/ui/my-day?done=hook" and await stored() == "mailto:anna@example.com"
    assert 'value="mailto:anna@example.com"' in (await client.get("/ui/my-day", cookies=session)).text
    refused = await client.post("/ui/me/notify-hook", cookies=session, data={"notify_hook": "ftp://chat"})
    assert "error=" in refused.headers["location"] and await stored() == "mailto:anna@example.com"
    await client.post("/ui/me/notify-hook", cookies=session, data={"notify_hook": ""})
    assert await stored() is None


async def test_text_no_database_can_store_is_a_422_on_either_backend(crm_app):
    """PostgreSQL's text holds no NUL (SQLite does): a NUL in a JSON body, a query or a
    form was a 500 from the driver there ("invalid byte sequence for encoding UTF8")."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    refused = [
        await client.post("/api/organizations", headers=anna, json={"name": "A\u0000B"}),
        await client.post("/api/organizations", headers={**anna, "Content-Type": "application/json"},
                          content=b'{"name": "\\ud8ce x"}'),
        await client.get("/api/organizations", headers=anna, params={"q": "A\x00B"}),
        await client.post("/ui/login", data={"token": "t\x00"}),
    ]
    assert [r.status_code for r in refused] == [422] * 4
    assert ["NUL" in r.json()["detail"] for r in refused] == [True, False, True, True]
    assert "surrogate" in refused[1].json()["detail"]
    # The text "\u0000" (a backslash and five characters) is ordinary text.
    kept = await client.post("/api/organizations", headers=anna, json={"name": "ООО «Путь C:\\u0000»"})
    assert kept.status_code == 201 and kept.json()["name"] == "ООО «Путь C:\\u0000»"
    async with container.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(tables.organizations)) == 1


async def test_a_document_returned_for_changes_goes_back_as_a_new_version_from_the_api_and_the_page(crm_app):
    """The ECM returned a contract for changes. Before, the rep could only attach the
    corrected file as another document, which started a second approval in the ECM while
    the first waited for a version that never came. Now the corrected file is the
    document's next version and goes to the approval that waits for it."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    cookie = {"session": anna["Authorization"].removeprefix("Bearer ")}
    org = (await client.post("/api/organizations", headers=anna, json={"name": "Возврат"})).json()
    deal = (await client.post("/api/deals", headers=anna, json={"organization_id": org["id"], "title": "D"})).json()
    base = f"/api/deals/{deal['id']}/documents"
    doc = (await client.post(base, headers=anna, files={"file": ("c.pdf", b"%PDF v1", "application/pdf")})).json()
    sent = await client.post(f"/api/deals/{deal['id']}/approval-requests", headers=anna,
                             json={"document_id": doc["id"]})
    assert sent.status_code == 202
    async with container.session_factory() as session, session.begin():
        await session.execute(tables.approval_requests.update().values(status="returned", stage="finance",
                                                                       reason="the price in 4.2", revision=3))
    again = await client.post(f"/api/deals/{deal['id']}/approval-requests", headers=anna,
                              json={"document_id": doc["id"]})
    assert again.status_code == 409 and "send a new version" in again.json()["detail"]
    assert "the price in 4.2" in again.json()["detail"]
    by_button = await client.post(f"/ui/deals/{deal['id']}/approval-requests", cookies=cookie,
                                  data={"document_id": doc["id"]})  # a page left open before the return
    assert by_button.status_code == 303 and "send%20a%20new%20version" in by_button.headers["location"]
    listed = (await client.get(base, headers=anna)).json()
    assert (listed[0]["approval"]["status"], listed[0]["approval"]["reason"], listed[0]["may_request"]) == (
        "returned", "the price in 4.2", False)
    page = (await client.get(f"/ui/deals/{deal['id']}", cookies=cookie)).text
    assert "the price in 4.2" in page and "Send the corrected version" in page and "request-approval" not in page

    versions = f"{base}/{doc['id']}/versions"
    v2 = await client.post(versions, headers=anna, files={"file": ("c-fixed.pdf", b"%PDF v2", "application/pdf")})
    assert v2.status_code == 201, v2.text
    assert (v2.json()["version_no"], v2.json()["filename"], v2.json()["created"], v2.json()["sent_to_approval"]) == (
        2, "c-fixed.pdf", True, sent.json()["id"])
    same = await client.post(versions, headers=anna, files={"file": ("again.pdf", b"%PDF v2", "application/pdf")})
    assert same.status_code == 200 and same.json()["created"] is False and same.json()["version_no"] == 2
    content = f"/api/documents/{doc['id']}/content"
    assert (await client.get(content, headers=anna)).content == b"%PDF v2"
    assert (await client.get(content, headers=anna, params={"sha256": doc["sha256"]})).content == b"%PDF v1"
    unknown = await client.get(content, headers=anna, params={"sha256": "0" * 64})
    assert unknown.status_code == 404 and "no version with sha256" in unknown.json()["detail"]
    assert (await client.get(content, headers=anna, params={"sha256": "nope"})).status_code == 422
    missing = await client.post(f"{base}/missing/versions", headers=anna, files={"file": ("x.pdf", b"x", "a/b")})
    assert missing.status_code == 404
    async with container.session_factory() as session:
        events = (await session.execute(select(tables.outbox.c.message_type).order_by(tables.outbox.c.id))
                  ).scalars().all()
    assert events == ["crm.approval_requested", "crm.document_version_added"]

    # the page: a third version, by the form
    by_page = await client.post(f"/ui/deals/{deal['id']}/documents/{doc['id']}/versions", cookies=cookie,
                                files={"file": ("c-v3.pdf", b"%PDF v3", "application/pdf")})
    assert by_page.status_code == 303 and by_page.headers["location"].endswith("?done=version_sent")
    petr = {"session": users["petr"]["headers"]["Authorization"].removeprefix("Bearer ")}  # another team
    refused = await client.post(f"/ui/deals/{deal['id']}/documents/{doc['id']}/versions", cookies=petr,
                                files={"file": ("c-v4.pdf", b"%PDF v4", "application/pdf")})
    assert refused.status_code == 303 and "error=" in refused.headers["location"]
    page = (await client.get(f"/ui/deals/{deal['id']}", cookies=cookie)).text
    assert "c-v3.pdf" in page and "v3" in page
    assert (await client.get(content, headers=anna)).content == b"%PDF v3"
    # the first file again while the approval is with the ECM: the approval has had it and
    # would not go back to it, so the CRM would show a file nobody decides on
    back = await client.post(versions, headers=anna, files={"file": ("c-again.pdf", b"%PDF v1", "application/pdf")})
    assert back.status_code == 409, back.text
    assert back.json()["detail"] == ("this file is version 1 of the document, which its approval has had already "
                                     "(returned); attach the corrected file")
    by_form = await client.post(f"/ui/deals/{deal['id']}/documents/{doc['id']}/versions", cookies=cookie,
                                files={"file": ("c-again.pdf", b"%PDF v1", "application/pdf")})
    assert by_form.status_code == 303 and "attach%20the%20corrected%20file" in by_form.headers["location"]
    assert (await client.get(content, headers=anna)).content == b"%PDF v3"  # nothing changed
    # the organization card's timeline tells the document's story: attached, then each version
    card = (await client.get(f"/api/organizations/{org['id']}/card", headers=anna)).json()
    documents = [e["text"] for e in card["timeline"] if e["kind"] == "document"]
    assert documents == ["deal «D»: c-v3.pdf, version 3", "deal «D»: c-fixed.pdf, version 2",
                         "deal «D»: c.pdf attached"], card["timeline"]
    assert {e["actor_id"] for e in card["timeline"] if e["kind"] == "document"} == {users["anna"]["id"]}
    # once the approval is over, an earlier file may become the current one again
    async with container.session_factory() as session, session.begin():
        await session.execute(tables.approval_requests.update().values(status="rejected"))
    reverted = await client.post(versions, headers=anna, files={"file": ("c.pdf", b"%PDF v1", "application/pdf")})
    assert reverted.status_code == 201 and reverted.json()["version_no"] == 4, reverted.text
    assert reverted.json()["sent_to_approval"] is None


async def test_the_import_page_says_why_an_import_failed(crm_app):
    """A failed import showed only `failed`: the rep never learnt that the file could not be
    read past some row, or that a restart interrupted it and a new dry run would go on."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    cookie = {"session": anna["Authorization"].removeprefix("Bearer ")}
    up = await client.post("/api/imports", headers=anna,
                           files={"file": ("orgs.csv", "Наименование\nООО «Один»\n".encode(), "text/csv")})
    assert up.status_code == 201, up.text
    reason = "interrupted: the CRM service stopped after 0 rows; run the dry run again"
    async with container.session_factory() as session, session.begin():
        await session.execute(tables.imports.update().values(status="failed", error=reason))
    page = (await client.get(f"/ui/imports/{up.json()['id']}", cookies=cookie)).text
    assert f'id="job-error">{reason}</div>' in page and 'value="dry_run"' in page


async def test_an_import_reads_each_csv_row_in_its_own_encoding(crm_app):
    """A UTF-8 export with one row pasted in from a Windows-1251 file, past the first 64 KiB
    the encoding used to be guessed from, failed the whole import there ("cannot be read
    past some row"); the other way round, UTF-8 rows came in garbled. Now each row is read
    in its own encoding, and a row in neither is an error in the report."""
    client, users, container = crm_app
    anna = users["anna"]["headers"]
    rows = [f"ООО «Ромашка {n}»;Ёлочная улица, дом {n}" for n in range(1, 2001)]
    data = b"\n".join([("Наименование;Адрес\n" + rows[0]).encode("utf-8-sig")]
                      + [row.encode("cp1251" if n == 1900 else "utf-8") for n, row in enumerate(rows[1:], start=2)]
                      + [b"\x98\x98;x"])  # in neither: 0x98 is no Windows-1251 character
    up = await client.post("/api/imports", headers=anna, files={"file": ("orgs.csv", data, "text/csv")})
    assert up.status_code == 201, up.text
    job = up.json()
    await client.post(f"/api/imports/{job['id']}/dry-run", headers=anna)
    dry = await _wait_import(client, anna, job["id"], "dry_run")
    assert dry["counts"]["create"] == 2000 and dry["counts"]["error"] == 1
    await client.post(f"/api/imports/{job['id']}/apply", headers=anna)
    applied = await _wait_import(client, anna, job["id"], "applied")
    assert applied["counts"] == dry["counts"]
    report = (await client.get(applied["report_url"], headers=anna)).content.decode("utf-8-sig")
    (error,) = [line for line in csv.DictReader(io.StringIO(report)) if line["outcome"] == "error"]
    assert error["row"] == "2002" and error["message"] == "this row is neither UTF-8 nor Windows-1251 text"
    async with container.session_factory() as session:
        names = set(await session.scalars(select(tables.organizations.c.name)))
    assert names == {f"ООО «Ромашка {n}»" for n in range(1, 2001)}


async def test_a_request_the_ecm_has_not_answered_for_a_while_says_so_until_it_does(crm_app):
    """A request whose delivery is held up (a dead letter, a stopped consumer, a paused
    direction) showed "requested" for good, as if all were well. Once the ECM has
    reported nothing for CRM_UNANSWERED_AFTER_MINUTES it says so, in the API and on the
    deal and organization pages, and stops saying it when the ECM's first status comes."""
    from sqlalchemy import update

    from crm_service.service_layer import handlers
    from schemas import crm_commands
    from schemas.envelope import new_envelope
    from schemas.registry import encode, parse_message

    client, users, container = crm_app
    anna = users["anna"]["headers"]
    cookie = {"session": anna["Authorization"].removeprefix("Bearer ")}
    org = (await client.post("/api/organizations", headers=anna, json={"name": "Долгая доставка"})).json()
    deal = (await client.post("/api/deals", headers=anna,
                              json={"organization_id": org["id"], "title": "Аренда"})).json()
    document = (await client.post(f"/api/deals/{deal['id']}/documents", headers=anna, data={"doc_type": "contract"},
                                  files={"file": ("lease.pdf", b"%PDF-1.4 lease", "application/pdf")})).json()
    sent = (await client.post(f"/api/deals/{deal['id']}/approval-requests", headers=anna,
                              json={"document_id": document["id"]})).json()
    held_up = "no answer from the ECM yet"

    async def shown() -> list:
        request = (await client.get(f"/api/approval-requests/{sent['id']}", headers=anna)).json()
        deal_out = (await client.get(f"/api/deals/{deal['id']}", headers=anna)).json()
        documents = (await client.get(f"/api/deals/{deal['id']}/documents", headers=anna)).json()
        card = (await client.get(f"/api/organizations/{org['id']}/card", headers=anna)).json()
        day = (await client.get("/api/my-day", headers=anna)).json()
        deal_page = (await client.get(f"/ui/deals/{deal['id']}", cookies=cookie)).text
        org_page = (await client.get(f"/ui/organizations/{org['id']}", cookies=cookie)).text
        day_page = (await client.get("/ui/my-day", cookies=cookie)).text
        return [request["unanswered"], deal_out["approval"]["unanswered"], deal_out["approvals"][0]["unanswered"],
                documents[0]["approval"]["unanswered"], card["approvals"][0]["unanswered"],
                day["approvals"][0]["unanswered"], deal_page.count(held_up), org_page.count(held_up),
                day_page.count(held_up)]

    assert await shown() == [False] * 6 + [0, 0, 0]  # just sent
    async with container.session_factory() as session, session.begin():
        await session.execute(update(tables.approval_requests).where(tables.approval_requests.c.id == sent["id"])
                              .values(requested_at=datetime.now(timezone.utc) - timedelta(minutes=16)))
    assert await shown() == [True] * 6 + [2, 1, 1]  # the documents' and the approvals' tables on the deal page

    status = parse_message(encode(new_envelope(
        type=crm_commands.UPDATE_APPROVAL_STATUS, schema_version=2, source="it", correlation_id="c",
        payload=crm_commands.UpdateApprovalStatusV2(approval_request_id=sent["id"], status="in_progress",
                                                    stage="legal", revision=1, registry_approval_id="a-1"))))
    await handlers.apply_commands(container.uow(), [status], "it")
    assert await shown() == [False] * 6 + [0, 0, 0]


async def test_my_day_lists_the_approvals_of_my_deals_still_in_flight(crm_app):
    """A rep saw where an approval stood only deal by deal. "My day" now lists the open
    approval requests of the deals the rep owns, newest first: not a colleague's, and not
    those the ECM has closed (approved or rejected)."""
    from crm_service.service_layer import handlers
    from schemas import crm_commands
    from schemas.envelope import new_envelope
    from schemas.registry import encode, parse_message

    client, users, container = crm_app

    async def sent(user: str, title: str) -> dict:
        headers = users[user]["headers"]
        org = (await client.post("/api/organizations", headers=headers, json={"name": f"Орг {title}"})).json()
        deal = (await client.post("/api/deals", headers=headers,
                                  json={"organization_id": org["id"], "title": title})).json()
        document = (await client.post(f"/api/deals/{deal['id']}/documents", headers=headers,
                                      data={"doc_type": "contract"},
                                      files={"file": (f"{title}.pdf", title.encode(), "application/pdf")})).json()
        return (await client.post(f"/api/deals/{deal['id']}/approval-requests", headers=headers,
                                  json={"document_id": document["id"]})).json()

    first, approved, second, colleagues = (await sent("anna", "Аренда"), await sent("anna", "Поставка"),
                                           await sent("anna", "Лицензии"), await sent("boris", "Чужая"))
    done = parse_message(encode(new_envelope(
        type=crm_commands.UPDATE_APPROVAL_STATUS, schema_version=2, source="it", correlation_id="c",
        payload=crm_commands.UpdateApprovalStatusV2(approval_request_id=approved["id"], status="approved",
                                                    revision=3, registry_approval_id="a-1"))))
    await handlers.apply_commands(container.uow(), [done], "it")

    day = (await client.get("/api/my-day", headers=users["anna"]["headers"])).json()
    assert [(a["id"], a["deal_title"], a["status"]) for a in day["approvals"]] == [
        (second["id"], "Лицензии", "requested"), (first["id"], "Аренда", "requested")]
    assert [a["id"] for a in (await client.get("/api/my-day", headers=users["boris"]["headers"])).json()[
        "approvals"]] == [colleagues["id"]]
    page = (await client.get("/ui/my-day", cookies={
        "session": users["anna"]["headers"]["Authorization"].removeprefix("Bearer ")})).text
    assert "Лицензии" in page and "Аренда" in page and "Поставка" not in page and "Чужая" not in page
