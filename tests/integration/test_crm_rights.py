"""The CRM's role x action matrix on both backends through the real app: every API
endpoint, every role, no token and a wrong token. Changes to an organization or deal
belong to its owner (sales-a here), their team's manager and admins; a sales colleague
and a sales user of another team read but do not change. Mutating calls carry an
invalid body where one is needed: allowed callers get 422, nothing changes."""

import uuid

import httpx
import pytest

from crm_service.adapters import tables
from crm_service.config import CrmSettings
from crm_service.entrypoints.app import create_app
from crm_service.service_layer import handlers
from infra.users import upsert_user
from tests.support.rights_matrix import mismatches, uncovered

ROLES = {"sales-a": ("sales", "north"), "sales-b": ("sales", "north"), "manager": ("manager", "north"),
         "other-team": ("sales", "south"), "admin": ("admin", None), "auditor": ("auditor", None),
         "integration": ("integration", None)}
EVERY_SALES = {"sales-a", "sales-b", "manager", "other-team", "admin"}
READERS = EVERY_SALES | {"auditor"}
OWNERS = {"sales-a", "manager", "admin"}

MATRIX = [
    ("POST", "/api/organizations", {}, EVERY_SALES),
    ("GET", "/api/organizations", None, READERS | {"integration"}),  # the reconciliation reads them
    ("GET", "/api/organizations/{org}", None, READERS),
    ("PATCH", "/api/organizations/{org}", {"notes": "seen"}, OWNERS),
    ("GET", "/api/organizations/{org}/duplicates", None, READERS),
    ("POST", "/api/organizations/{org}/merge", {}, EVERY_SALES),  # the owner check needs a valid body
    ("GET", "/api/organizations/{org}/card", None, READERS),
    ("GET", "/api/organizations/{org}/contacts", None, READERS),
    ("GET", "/api/organizations/{org}/history", None, READERS),
    ("POST", "/api/organizations/{org}/transfer", {}, EVERY_SALES),
    ("POST", "/api/contacts", {}, EVERY_SALES),
    ("POST", "/api/leads", {}, EVERY_SALES),
    ("GET", "/api/leads", None, READERS),
    ("POST", "/api/leads/{missing}/convert", {"bogus": 1}, EVERY_SALES),
    ("POST", "/api/leads/{missing}/disqualify", {}, EVERY_SALES),
    ("GET", "/api/funnel", None, READERS),
    ("POST", "/api/deals", {}, EVERY_SALES),
    ("GET", "/api/deals/board", None, READERS),
    ("GET", "/api/deals/{deal}", None, READERS),
    ("PATCH", "/api/deals/{deal}", {"stage": "bogus"}, OWNERS),
    ("GET", "/api/deals/{deal}/stages", None, READERS),
    ("GET", "/api/deals/{deal}/documents", None, READERS),
    ("POST", "/api/deals/{deal}/documents", {}, EVERY_SALES),  # no file: 422 first; owners below
    ("POST", "/api/deals/{deal}/approval-requests", {"document_id": "missing"}, OWNERS),
    ("POST", "/api/deals/{deal}/documents/generate", {"template": "missing"}, OWNERS),
    ("POST", "/api/deals/{deal}/documents/{missing}/versions", {}, EVERY_SALES),  # no file: 422 first
    ("GET", "/api/document-templates", None, READERS),
    ("GET", "/api/documents/{missing}/content", None, READERS | {"integration"}),
    ("POST", "/api/documents/contents", {"ids": ["missing"]}, READERS | {"integration"}),
    ("GET", "/api/approval-requests/{missing}", None, READERS),
    ("GET", "/api/approval-requests/{missing}/trace", None, READERS),
    ("POST", "/api/approval-requests/{missing}/withdraw", {}, EVERY_SALES),  # no reason: 422 first; owners below
    ("POST", "/api/activities", {}, EVERY_SALES),
    ("POST", "/api/activities/{missing}/done", None, EVERY_SALES),
    ("GET", "/api/my-day", None, EVERY_SALES),
    ("PUT", "/api/me/notify-hook", {"notify_hook": "ftp://x"}, EVERY_SALES),
    ("GET", "/api/notifications", None, EVERY_SALES),
    ("GET", "/api/me", None, READERS),
    ("POST", "/api/imports", {}, EVERY_SALES),
    ("GET", "/api/imports/{missing}", None, READERS),
    ("PUT", "/api/imports/{missing}/mapping", {}, EVERY_SALES),
    ("POST", "/api/imports/{missing}/dry-run", None, EVERY_SALES),
    ("POST", "/api/imports/{missing}/apply", None, EVERY_SALES),
    ("GET", "/api/imports/{missing}/report", None, READERS),
]
RENAMES = {"{org_id}": "{org}", "{deal_id}": "{deal}", "{lead_id}": "{missing}", "{document_id}": "{missing}",
           "{request_id}": "{missing}", "{activity_id}": "{missing}", "{import_id}": "{missing}"}


@pytest.fixture
async def app_client(backend, databases, broker, tmp_path):
    settings = CrmSettings(database_url=databases.url("crm", backend), kafka_bootstrap_servers=broker,
                           files_dir=tmp_path / "files", imports_dir=tmp_path / "imports")
    app = create_app(settings)
    container = app.state.container
    tokens, ids = {}, {}
    for name, (role, team) in ROLES.items():
        tokens[name] = f"token-{name}-{uuid.uuid4().hex}"
        ids[name] = await upsert_user(container.session_factory, tables.users, name=name, role=role,
                                      token=tokens[name])
        if team:
            async with container.session_factory() as session, session.begin():
                await session.execute(tables.user_profiles.insert().values(user_id=ids[name], team=team))
    org = await handlers.create_organization(container.uow(), user_id=ids["sales-a"], name="Ромашка")
    deal = await handlers.create_deal(container.uow(), user_id=ids["sales-a"], organization_id=org.id,
                                      title="D", funnel=container.funnel)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://crm") as client:
        yield client, tokens, {"org": org.id, "deal": deal.id, "missing": str(uuid.uuid4())}
    await container.engine.dispose()


async def test_every_endpoint_answers_only_the_roles_the_matrix_allows(app_client):
    client, tokens, ids = app_client
    assert await mismatches(client, MATRIX, tokens, ids) == []


async def test_the_matrix_covers_every_api_endpoint(app_client):
    client, *_ = app_client
    assert await uncovered(client, MATRIX, RENAMES) == set()


async def test_a_colleague_may_not_merge_or_hand_over_what_is_not_theirs(app_client):
    client, tokens, ids = app_client
    as_b = {"Authorization": f"Bearer {tokens['sales-b']}"}
    other = (await client.post("/api/organizations", headers=as_b, json={"name": "Ромашка 2"})).json()
    merge = await client.post(f"/api/organizations/{other['id']}/merge", headers=as_b, json={"into_id": ids["org"]})
    assert merge.status_code == 403
    me = (await client.get("/api/me", headers=as_b)).json()
    handover = await client.post(f"/api/organizations/{ids['org']}/transfer", headers=as_b,
                                 json={"new_owner_id": me["id"]})
    assert handover.status_code == 403
    upload = {"file": ("c.txt", b"contract", "text/plain")}
    url = f"/api/deals/{ids['deal']}/documents"
    assert (await client.post(url, headers=as_b, files=upload)).status_code == 403
    as_manager = {"Authorization": f"Bearer {tokens['manager']}"}
    document = await client.post(url, headers=as_manager, files=upload)
    assert document.status_code == 201
    version = {"file": ("c2.txt", b"contract, corrected", "text/plain")}
    versions_url = f"{url}/{document.json()['id']}/versions"
    assert (await client.post(versions_url, headers=as_b, files=version)).status_code == 403
    assert (await client.post(versions_url, headers=as_manager, files=version)).status_code == 201

    # Taking an approval request back: who may change the deal, as asking for it.
    asked = await client.post(f"/api/deals/{ids['deal']}/approval-requests", headers=as_manager,
                              json={"document_id": document.json()["id"]})
    assert asked.status_code == 202
    withdraw_url = f"/api/approval-requests/{asked.json()['id']}/withdraw"
    for name in ("sales-b", "other-team"):
        refused = await client.post(withdraw_url, headers={"Authorization": f"Bearer {tokens[name]}"},
                                    json={"reason": "not mine"})
        assert refused.status_code == 403, name
    as_a = {"Authorization": f"Bearer {tokens['sales-a']}"}
    withdrawn = await client.post(withdraw_url, headers=as_a, json={"reason": "the client chose another supplier"})
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
