"""The sales journey of the foundation, as steps the e2e tests share."""

from __future__ import annotations

import hashlib
import uuid

from tests.support.identifiers import valid_ids
from tests.support.polling import wait_until

SALES = "sales-anna"
APPROVER_OF = {"legal": "legal-lena", "finance": "finance-fedor", "director": "director-dina"}


def create_deal_with_document(api, *, name: str, content: bytes | None = None, org: dict | None = None,
                              **org_fields) -> dict:
    if org is None:
        created = api.crm(SALES, "POST", "/api/organizations", json={"name": name, **org_fields})
        assert created.status_code == 201, created.text
        org = created.json()
    deal = api.crm(SALES, "POST", "/api/deals", json={"organization_id": org["id"], "title": f"Deal {name}"})
    assert deal.status_code == 201, deal.text
    content = content or f"contract for {name} {uuid.uuid4()}".encode()
    doc = api.crm(SALES, "POST", f"/api/deals/{deal.json()['id']}/documents",
                  files={"file": ("contract.txt", content, "text/plain")}, data={"doc_type": "contract"})
    assert doc.status_code == 201, doc.text
    assert doc.json()["sha256"] == hashlib.sha256(content).hexdigest()
    return {"org": org, "deal": deal.json(), "document": doc.json(), "content": content}


def request_approval(api, flow: dict, correlation_id: str | None = None) -> dict:
    headers = {"X-Correlation-ID": correlation_id} if correlation_id else {}
    response = api.crm(SALES, "POST", f"/api/deals/{flow['deal']['id']}/approval-requests",
                       json={"document_id": flow["document"]["id"]}, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "requested"
    flow["request"] = response.json()
    return flow


def crm_approval(api, flow: dict) -> dict:
    return api.crm(SALES, "GET", f"/api/deals/{flow['deal']['id']}").json()["approval"]


def wait_crm_status(api, flow: dict, status: str, stage: str | None = None, timeout: float = 60) -> dict:
    return wait_until(
        lambda: (a := crm_approval(api, flow)) and a["status"] == status and a["stage"] == stage and a,
        timeout=timeout, message=f"CRM approval {status}/{stage}",
    )


def ecm_approval(api, flow: dict, timeout: float = 60) -> dict:
    found = wait_until(
        lambda: api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json(),
        timeout=timeout, message="ECM approval",
    )
    assert len(found) == 1, found
    return found[0]


def decide(api, approval_id: str, stage_role: str, decision: str = "approve", **extra):
    response = api.ecm(APPROVER_OF[stage_role], "POST", f"/api/approvals/{approval_id}/decisions",
                       json={"decision": decision, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def verify_counterparty(api, counterparty_id: str) -> dict:
    """The steward completes the record's identifiers and verifies it; returns the ids."""
    ids = valid_ids()
    edited = api.ecm("steward-stas", "PATCH", f"/api/counterparties/{counterparty_id}",
                     json={**ids, "reason": "identifiers from the signed card of the company"})
    assert edited.status_code == 200, edited.text
    verified = api.ecm("steward-stas", "POST", f"/api/counterparties/{counterparty_id}/verify",
                       json={"reason": "checked in EGRUL"})
    assert verified.status_code == 200, verified.text
    return ids


def approve_all(api, approval_id: str, timeout: float = 60) -> dict:
    """Decides every stage of the approval's route as its role; verifies the
    counterparty when the document type makes the last stage wait for it."""
    while True:
        approval = api.ecm("ecm-auditor", "GET", f"/api/approvals/{approval_id}").json()
        if approval["status"] == "awaiting_counterparty_verification":
            verify_counterparty(api, approval["counterparty_id"])
            continue
        if approval["status"] != "in_progress":
            return approval
        step = next(s for s in approval["steps"] if s["name"] == approval["current_stage"])
        decide(api, approval_id, step["role"])
