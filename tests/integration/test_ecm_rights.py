"""The ECM's role x action matrix, on both backends, through the real app: every API
endpoint, every role, no token and a wrong token. Only the allowed combinations get past
authorisation (anything but 401/403); rights by participation are part of it (the
steward is no participant of a contract's approval and is not granted its type).

Mutating endpoints are called with an invalid body: an allowed caller gets 422 and
nothing changes; a refused one gets 401/403 before the body is looked at."""

import io
import uuid

import pytest

from ecm_service.service_layer.commands import apply_command
from ecm_service.service_layer.documents import store_version
from schemas import ecm_commands
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import encode, parse_message
from tests.support.rights_matrix import ECM_ROLES, mismatches, uncovered

STAFF = set(ECM_ROLES)
READERS = STAFF - {"integration"}
DECIDERS = {"legal", "finance", "director", "steward"}
# The contract's participants (route legal -> finance -> director, escalation to the
# director), the roles its type grants (legal), and those who read everything.
CONTRACT_READERS = {"legal", "finance", "director", "auditor", "admin", "integration"}

MATRIX = [
    ("GET", "/api/counterparties", None, STAFF),
    ("GET", "/api/counterparties/{cp}", None, STAFF),
    ("GET", "/api/counterparties/{cp}/history", None, READERS),
    ("POST", "/api/counterparties/{cp}/verify", {"bogus": 1}, {"steward"}),
    ("POST", "/api/counterparties/{cp}/reject", {}, {"steward"}),
    ("POST", "/api/counterparties/{cp}/merge", {}, {"steward"}),
    ("POST", "/api/counterparties/{cp}/archive", {}, {"steward"}),
    ("POST", "/api/counterparties/{cp}/not-duplicate", {}, {"steward"}),
    ("PATCH", "/api/counterparties/{cp}", {}, {"steward"}),
    ("GET", "/api/history/verify", None, {"auditor", "admin"}),
    ("GET", "/api/counterparties/{cp}/match", None, READERS),
    ("POST", "/api/reconciliation/runs", {"mode": "bogus"}, {"admin", "integration"}),
    ("GET", "/api/reconciliation/runs", None, {"admin", "integration", "auditor", "steward"}),
    ("GET", "/api/reconciliation/runs/{missing}", None, {"admin", "integration", "auditor", "steward"}),
    ("POST", "/api/reconciliation/runs/{missing}/batches", {}, {"admin", "integration"}),
    ("POST", "/api/reconciliation/runs/{missing}/finish", None, {"admin", "integration"}),
    ("GET", "/api/reconciliation/report", None, {"auditor", "admin", "steward"}),
    ("POST", "/api/reconciliation/report/snapshots", None, {"auditor", "admin"}),
    ("GET", "/api/reconciliation/report/snapshots", None, {"auditor", "admin", "steward"}),
    ("GET", "/api/reconciliation/report/snapshots/{missing}", None, {"auditor", "admin", "steward"}),
    ("GET", "/api/reports/matching-quality", None, {"steward", "auditor", "admin"}),
    ("GET", "/api/reports/merges-held-apart", None, {"steward", "auditor", "admin"}),
    ("POST", "/api/counterparties/bulk-loads", {}, {"steward", "admin"}),
    ("GET", "/api/counterparties/bulk-loads", None, {"steward", "admin", "auditor"}),
    ("GET", "/api/counterparties/bulk-loads/{missing}", None, {"steward", "admin", "auditor"}),
    ("GET", "/api/counterparties/bulk-loads/{missing}/report", None, {"steward", "admin", "auditor"}),
    ("GET", "/api/documents", None, STAFF),
    ("POST", "/api/documents", {}, {"legal", "finance", "director", "admin", "integration"}),
    ("POST", "/api/documents/batch", {}, {"legal", "finance", "director", "admin", "integration"}),
    ("GET", "/api/documents/{doc}", None, CONTRACT_READERS),
    ("GET", "/api/documents/{doc}/content", None, CONTRACT_READERS),
    ("POST", "/api/documents/{doc}/versions", {}, {"legal", "finance", "director", "admin", "integration"}),
    ("POST", "/api/documents/{doc}/legal-hold", {}, {"legal", "admin"}),
    ("POST", "/api/documents/{doc}/legal-hold/release", {}, {"legal", "admin"}),
    ("POST", "/api/documents/disposals", {"bogus": 1}, {"admin"}),
    ("GET", "/api/approvals", None, STAFF),
    ("GET", "/api/approvals/{approval}", None, CONTRACT_READERS),
    ("POST", "/api/approvals/{approval}/decisions", {}, DECIDERS),
    ("POST", "/api/approvals/{approval}/delay-reasons", {}, DECIDERS),
    ("GET", "/api/approvals/{approval}/sheet.html", None, CONTRACT_READERS - {"integration"}),
    ("GET", "/api/approvals/{approval}/sheet.csv", None, CONTRACT_READERS - {"integration"}),
    ("GET", "/api/inbox", None, DECIDERS),
    ("GET", "/api/notifications", None, DECIDERS | {"admin"}),
    ("GET", "/api/deputies", None, DECIDERS),
    ("POST", "/api/deputies", {}, DECIDERS),
    ("DELETE", "/api/deputies/{missing}", None, DECIDERS),
    ("GET", "/api/delay-reasons", None, STAFF),
    ("GET", "/api/reports/delay-reasons", None, {"legal", "finance", "director", "auditor", "admin"}),
    ("GET", "/api/admin/routes", None, {"admin", "auditor"}),
    ("PUT", "/api/admin/routes/{doc_type}", {}, {"admin"}),
    ("GET", "/api/admin/routes/in-flight", None, {"admin", "auditor"}),
    ("POST", "/api/admin/deadlines/check", None, {"admin"}),
    ("GET", "/api/admin/withdrawals-before-start", None, {"admin"}),
    ("GET", "/api/documents/{doc}/originals", None, CONTRACT_READERS),
    ("POST", "/api/documents/{doc}/originals", {"location": "archive"}, {"legal", "admin"}),
    ("POST", "/api/documents/{doc}/originals/1/hand-out", {}, {"legal", "admin"}),
    ("POST", "/api/documents/{doc}/originals/1/return", {}, {"legal", "admin"}),
    ("GET", "/api/originals/handed-out", None, {"legal", "admin", "auditor"}),
    ("DELETE", "/api/admin/withdrawals-before-start/crm/{missing}", None, {"admin"}),
]


@pytest.fixture
async def app_client(ecm_app):
    client, tokens, container = ecm_app
    return client, tokens, await _an_approval_in_progress(container), container


async def _an_approval_in_progress(container) -> dict:
    sha, size = container.content_store.put(io.BytesIO(b"contract under approval"), max_bytes=10**6)
    doc, version, _ = await store_version(
        container.uow(), user_id="integration-owner", doc_type="contract", title="c", filename="c.txt",
        content_type="text/plain", sha256=sha, size=size, external_ref=None, retention=container.retention)
    org = ExternalRef(system="crm", id=str(uuid.uuid4()))
    request = ExternalRef(system="crm", id=str(uuid.uuid4()))
    for type_, payload in (
        (ecm_commands.SYNC_COUNTERPARTY, ecm_commands.SyncCounterpartyV1(external_ref=org, name="Вектор")),
        (ecm_commands.START_APPROVAL, ecm_commands.StartApprovalV1(
            external_ref=request, counterparty_ref=org, initiator_ref=ExternalRef(system="crm", id="u"),
            document_id=doc["id"], document_version_id=version["id"], sha256=sha, doc_type="contract",
            title="c"))):
        envelope = new_envelope(type=type_, schema_version=1, source="it", correlation_id="c", payload=payload)
        await apply_command(container.uow(), parse_message(encode(envelope)), "it", container.routes,
                            container.document_types)
    async with container.uow() as uow:
        approval = await uow.external_refs.find("approval", request)
        cp = await uow.external_refs.find("counterparty", org)
    return {"doc": doc["id"], "approval": approval, "cp": cp, "missing": str(uuid.uuid4()), "doc_type": "contract"}


RENAMES = {"{counterparty_id}": "{cp}", "{document_id}": "{doc}", "{approval_id}": "{approval}",
           "{load_id}": "{missing}", "{deputy_id}": "{missing}", "{run_id}": "{missing}",
           "{snapshot_id}": "{missing}", "{system}/{external_id}": "crm/{missing}",
           "{number}": "1"}


async def test_every_endpoint_answers_only_the_roles_the_matrix_allows(app_client):
    client, tokens, ids, _ = app_client
    assert await mismatches(client, MATRIX, tokens, ids) == []


async def test_the_matrix_covers_every_api_endpoint(app_client):
    client, *_ = app_client
    assert await uncovered(client, MATRIX, RENAMES) == set()


async def test_participation_decides_who_may_decide_now(app_client):
    client, tokens, ids, _ = app_client
    url = f"/api/approvals/{ids['approval']}/decisions"
    decision = {"decision": "approve"}
    finance = await client.post(url, json=decision, headers={"Authorization": f"Bearer {tokens['finance']}"})
    assert finance.status_code == 403 and "legal" in finance.json()["detail"]
    legal = await client.post(url, json=decision, headers={"Authorization": f"Bearer {tokens['legal']}"})
    assert legal.status_code == 200 and legal.json()["current_stage"] == "finance"
    again = await client.post(url, json=decision, headers={"Authorization": f"Bearer {tokens['legal']}"})
    assert again.status_code == 403
