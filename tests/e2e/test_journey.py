"""The foundation journey through the public HTTP APIs of three real processes, on
SQLite and on PostgreSQL."""

import csv
import hashlib
import io
import json
import uuid

import httpx

from schemas.topics import DATA_TOPICS
from tests.e2e.journey import (
    SALES,
    approve_all,
    create_deal_with_document,
    crm_approval,
    decide,
    ecm_approval,
    request_approval,
    verify_counterparty,
    wait_crm_status,
)
from tests.support import alerts
from tests.support.metrics import samples
from tests.support.polling import wait_until


def test_name_only_organization_goes_through_approval_to_approved(api, system):
    correlation_id = f"e2e-{uuid.uuid4().hex}"
    flow = request_approval(api, create_deal_with_document(api, name="Вектор плюс"), correlation_id)
    assert crm_approval(api, flow)["status"] in ("requested", "in_progress")

    approval = ecm_approval(api, flow)
    assert approval["route"] == {"doc_type": "contract", "version": 1}
    assert [(s["name"], s["role"], s["status"]) for s in approval["steps"]] == [
        ("legal", "legal", "pending"), ("finance", "finance", "waiting"), ("director", "director", "waiting")]

    # The organization arrived as a pending counterparty, never rejected for lacking a tax id.
    org_ref = f"crm:{flow['org']['id']}"
    (counterparty,) = api.ecm("steward-stas", "GET", f"/api/counterparties?external_ref={org_ref}").json()
    assert counterparty["status"] == "pending_verification" and "inn_missing" in counterparty["quality_flags"]
    assert counterparty["id"] == approval["counterparty_id"]

    # The same bytes on both sides, and the approval is bound to their hash.
    sha = flow["document"]["sha256"]
    assert approval["document"]["sha256"] == sha
    stored = api.ecm("legal-lena", "GET", f"/api/documents/{approval['document']['id']}/content")
    assert stored.status_code == 200 and hashlib.sha256(stored.content).hexdigest() == sha
    assert stored.content == flow["content"]

    wait_crm_status(api, flow, "in_progress", "legal")
    wrong = api.ecm("finance-fedor", "POST", f"/api/approvals/{approval['id']}/decisions", json={"decision": "approve"})
    assert wrong.status_code == 403
    sales_in_ecm = api.ecm("legal-lena", "POST", f"/api/approvals/{approval['id']}/decisions", json={"decision": "x"})
    assert sales_in_ecm.status_code == 422

    decide(api, approval["id"], "legal", comment="clause 4 checked")
    wait_crm_status(api, flow, "in_progress", "finance")
    decide(api, approval["id"], "finance", comment='=HYPERLINK("http://evil.example","open")')
    # A contract needs a verified counterparty before its last stage: sales sees that it
    # waits, nobody is asked anything; the steward completes and verifies the record.
    waiting = wait_crm_status(api, flow, "awaiting_counterparty_verification", "director")
    assert waiting["overdue"] is False
    early = api.ecm("director-dina", "POST", f"/api/approvals/{approval['id']}/decisions", json={"decision": "approve"})
    assert early.status_code == 409
    ids = verify_counterparty(api, counterparty["id"])
    due = wait_crm_status(api, flow, "in_progress", "director")
    assert due["due_at"] is not None
    decide(api, approval["id"], "director")
    final = wait_crm_status(api, flow, "approved", None)
    assert final["id"] == flow["request"]["id"]

    trace = api.crm(SALES, "GET", f"/api/approval-requests/{flow['request']['id']}/trace").json()
    assert [h["hop"] for h in trace["hops"][:2]] == ["crm.requested", "crm.event_published"]
    assert trace["hops"][1]["at"] is not None and trace["registry_approval_id"] == approval["id"]
    assert [(h["hop"], h["status"], h["stage"]) for h in trace["hops"][2:]] == [
        (hop, status, stage)
        for status, stage in (("in_progress", "legal"), ("in_progress", "finance"),
                              ("awaiting_counterparty_verification", "director"), ("in_progress", "director"),
                              ("approved", None))
        for hop in ("ecm.status_changed", "crm.status_received")]
    times = [h["at"] for h in trace["hops"]]
    assert times == sorted(times)

    sheet = api.ecm("ecm-auditor", "GET", f"/api/approvals/{approval['id']}/sheet.csv")
    lines = list(csv.reader(io.StringIO(sheet.content.decode("utf-8-sig"))))
    assert [(r[1], r[3], r[4], r[6]) for r in lines[1:]] == [
        ("legal", "approved", "legal-lena", sha), ("finance", "approved", "finance-fedor", sha),
        ("director", "approved", "director-dina", sha)]
    assert lines[1][7] == "clause 4 checked"
    assert lines[0][5] == "Когда / When" and lines[1][5].endswith(" UTC")  # BUSINESS_TIMEZONE, named
    assert lines[2][7] == "'=HYPERLINK(\"http://evil.example\",\"open\")"  # shown as text, never run
    page = api.ecm("ecm-auditor", "GET", f"/api/approvals/{approval['id']}/sheet.html")
    assert page.status_code == 200 and "Лист согласования" in page.text and sha in page.text
    assert api.ecm("ecm-integration", "GET", f"/api/approvals/{approval['id']}/sheet.csv").status_code == 403

    org = wait_until(lambda: (o := api.crm(SALES, "GET", f"/api/organizations/{flow['org']['id']}").json())
                     ["registry"]["status"] == "linked" and o, timeout=60, message="verified link in the CRM")
    assert org["registry"] == {"id": counterparty["id"], "status": "linked", "legal_name": "Вектор плюс"}
    # The registry's identifiers filled the CRM's empty fields; nobody was asked.
    assert (org["inn"], org["kpp"], org["ogrn"]) == (ids["inn"], ids["kpp"], ids["ogrn"])
    assert org["registry_differences"] == [] and org["link_text"] == "verified in the registry as Вектор плюс"

    # One correlation id follows the request through all three processes' logs, and every
    # line of them is a JSON object naming its service and level, the libraries' too
    # (aiokafka's, faust's, uvicorn's records were plain text).
    for name in ("crm", "bridge", "ecm"):
        text = (system.log_dir / f"{name}.log").read_text().splitlines()
        assert all(json.loads(line)["service"] == name and json.loads(line)["level"] for line in text), name
        lines = [json.loads(line) for line in text if correlation_id in line]
        assert lines and all(line["correlation_id"] == correlation_id for line in lines), name


def test_rejection_reaches_sales_with_its_reason_but_not_the_internal_comment(api):
    address = {"kind": "legal", "city": "Казань", "street": "ул. Баумана", "building": "19"}
    flow = request_approval(api, create_deal_with_document(api, name="Ромашка", addresses=[address]))
    approval = ecm_approval(api, flow)
    # Structured addresses (crm.approval_requested v2) reach the registry's pending record.
    (party,) = api.ecm("steward-stas", "GET", f"/api/counterparties?external_ref=crm:{flow['org']['id']}").json()
    assert [{k: a[k] for k in address} for a in party["addresses"]] == [address]
    decide(api, approval["id"], "legal", "reject", comment="INTERNAL: counterparty looks shady",
           reason="Payment terms are not acceptable")
    final = wait_crm_status(api, flow, "rejected", None)
    assert final["reason"] == "Payment terms are not acceptable"
    deal = api.crm(SALES, "GET", f"/api/deals/{flow['deal']['id']}").text
    assert "INTERNAL" not in deal
    closed = api.ecm("finance-fedor", "POST", f"/api/approvals/{approval['id']}/decisions",
                     json={"decision": "approve"})
    assert closed.status_code == 409 and "rejected" in closed.json()["detail"]


def test_a_contract_returned_for_changes_goes_on_with_the_new_version_the_rep_sends_from_the_crm(api):
    """Finance returns the contract with what to change; the rep, in the CRM only, sends the
    corrected file as the document's new version; the same ECM approval goes on with it
    (no second approval), its decisions bound to the new hash."""
    flow = request_approval(api, create_deal_with_document(api, name="Доработка"))
    approval = ecm_approval(api, flow)
    decide(api, approval["id"], "legal")
    decide(api, approval["id"], "finance", "return", comment="INTERNAL: margin too thin",
           reason="Fix the price in clause 4.2")
    returned = wait_crm_status(api, flow, "returned", "finance")
    assert returned["reason"] == "Fix the price in clause 4.2"
    deal, document = flow["deal"]["id"], flow["document"]["id"]
    again = api.crm(SALES, "POST", f"/api/deals/{deal}/approval-requests", json={"document_id": document})
    assert again.status_code == 409 and "Fix the price in clause 4.2" in again.json()["detail"]

    corrected = b"contract, price in 4.2 corrected " + uuid.uuid4().bytes
    sent = api.crm(SALES, "POST", f"/api/deals/{deal}/documents/{document}/versions",
                   files={"file": ("contract-v2.txt", corrected, "text/plain")})
    assert sent.status_code == 201, sent.text
    assert (sent.json()["version_no"], sent.json()["sent_to_approval"]) == (2, flow["request"]["id"])
    wait_crm_status(api, flow, "in_progress", "legal")  # the contract route decides again from its first stage

    (same,) = api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json()
    assert (same["id"], same["round"], same["document"]["sha256"]) == (
        approval["id"], 2, hashlib.sha256(corrected).hexdigest())
    (stored,) = api.ecm("legal-lena", "GET", f"/api/documents?external_ref=crm:{document}").json()
    assert [v["sha256"] for v in stored["versions"]] == [flow["document"]["sha256"],
                                                         hashlib.sha256(corrected).hexdigest()]
    content = api.ecm("legal-lena", "GET", f"/api/documents/{stored['id']}/content")
    assert content.content == corrected
    for stage in ("legal", "finance"):
        decide(api, approval["id"], stage)
    wait_crm_status(api, flow, "awaiting_counterparty_verification", "director")
    deal_view = api.crm(SALES, "GET", f"/api/deals/{deal}").text
    assert "INTERNAL" not in deal_view


def test_known_tax_id_links_to_the_verified_counterparty_instead_of_duplicating(api):
    verified = api.ecm("steward-stas", "GET", "/api/counterparties?status=verified").json()
    sber = next(c for c in verified if c["inn"] == "7707083893")
    flow = request_approval(api, create_deal_with_document(api, name="Сбер (typed quickly)", inn="7707083893"))
    approval = ecm_approval(api, flow)
    assert approval["counterparty_id"] == sber["id"]
    again = api.ecm("steward-stas", "GET", "/api/counterparties?status=verified").json()
    assert len([c for c in again if c["inn"] == "7707083893"]) == 1
    linked = api.ecm("steward-stas", "GET", f"/api/counterparties/{sber['id']}").json()
    assert {"system": "crm", "id": flow["org"]["id"]} in linked["external_refs"]
    assert linked["name"] == sber["name"]  # the registry's legal name is not overwritten by the CRM's
    org = wait_until(
        lambda: (o := api.crm(SALES, "GET", f"/api/organizations/{flow['org']['id']}").json())["registry"] and o,
        timeout=60, message="link status in the CRM")
    assert org["registry"]["status"] == "linked" and org["registry"]["legal_name"] == sber["name"]


def metric(base: str, name: str, **labels) -> float:
    return sum(s.value for s in samples(httpx.get(f"{base}/metrics").text, name)
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_health_readiness_metrics_and_openapi_are_served(api, system):
    for base in (system.crm_url, system.ecm_url):
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "ok" and health["database"] is True and health["broker"] is True
        assert httpx.get(f"{base}/ready").json() == {
            "ready": True, "database": True, "broker": True, "migrations_at_head": True}
        assert "paths" in httpx.get(f"{base}/openapi.json").json()
    # The journeys above went through: every process counted its part.
    bridge = system.bridge_url
    assert metric(bridge, "bridge_messages_consumed_total", consumer="sync-bridge:crm-to-ecm",
                  outcome="applied") >= 3
    assert metric(bridge, "bridge_document_transfer_bytes_total") > 0
    assert metric(bridge, "bridge_messages_published_total", producer="bridge", topic="ecm.commands") >= 6
    assert metric(system.ecm_url, "bridge_messages_consumed_total", consumer="ecm-service",
                  type="ecm.start_approval", outcome="applied") >= 3
    assert metric(system.crm_url, "bridge_messages_published_total", producer="crm", topic="crm.events") >= 3
    assert metric(system.crm_url, "bridge_handler_seconds_count", consumer="crm-service") > 0
    wait_until(lambda: metric(system.ecm_url, "ecm_approvals", state="approved") >= 1, timeout=30,
               message="approvals gauge")
    assert "bridge_outbox_backlog" in httpx.get(f"{system.crm_url}/metrics").text
    assert metric(bridge, "bridge_direction_paused", direction="crm-to-ecm") == 0
    # The alerts that watch gauges find them where the processes expose them (the counters'
    # alerts are checked where their events happen: test_reliability, test_operations).
    pages = [httpx.get(f"{base}/metrics").text for base in (system.crm_url, system.ecm_url, bridge)]
    outboxes = [sample for text in pages for sample in alerts.selected("OutboxNotPublishing", text)]
    assert {sample.labels["service"] for sample in outboxes} == {"crm", "ecm"}
    assert all(sample.value < 120 for sample in outboxes)  # the alert's threshold, on a healthy system
    lags = [sample for text in pages for sample in alerts.selected("ConsumerFallingBehind", text)
            if sample.name == "bridge_consumer_lag"]
    assert {sample.labels["topic"] for sample in lags} == set(DATA_TOPICS)
    flow = [sample for text in pages for sample in alerts.selected("FlowStalled", text)]
    for counted in ("bridge_messages_published_total", "bridge_messages_consumed_total"):
        assert {s.labels["topic"] for s in flow if s.name == counted and s.value > 0} == set(DATA_TOPICS), counted
    assert api.crm(SALES, "GET", "/api/deals/missing").status_code == 404
    assert api.ecm("legal-lena", "GET", "/api/approvals/missing").status_code == 404


def test_the_steward_verifies_and_merges_and_the_crm_follows(api):
    def pending_record(flow):
        return wait_until(lambda: api.ecm("steward-stas", "GET",
                                          f"/api/counterparties?external_ref=crm:{flow['org']['id']}").json(),
                          timeout=60, message="pending record")[0]

    first = request_approval(api, create_deal_with_document(api, name="ООО «Газ-Сервис»"))
    record = pending_record(first)
    url = f"/api/counterparties/{record['id']}"
    refused = api.ecm("steward-stas", "POST", f"{url}/verify", json={})
    assert refused.status_code == 409 and "inn_missing" in refused.json()["detail"]
    assert api.ecm("legal-lena", "POST", f"{url}/verify", json={}).status_code == 403
    assert api.ecm("steward-stas", "POST", f"{url}/reject", json={}).status_code == 422  # a reason is required

    edited = api.ecm("steward-stas", "PATCH", url, json={
        "inn": "7736050003", "kpp": "773601001", "ogrn": "1027700070518", "reason": "checked the state register"})
    assert edited.status_code == 200 and edited.json()["quality_flags"] == []
    verified = api.ecm("steward-stas", "POST", f"{url}/verify", json={"reason": "documents seen"})
    assert verified.json()["status"] == "verified"
    org = wait_until(lambda: (o := api.crm(SALES, "GET", f"/api/organizations/{first['org']['id']}").json())
                     ["registry"] and o["registry"]["status"] == "linked" and o,
                     timeout=60, message="CRM sees the verification")
    assert org["registry"]["id"] == record["id"]
    # The CRM's empty identifiers were filled from the verified record; nothing was asked.
    assert (org["inn"], org["kpp"], org["ogrn"]) == ("7736050003", "773601001", "1027700070518")

    second = request_approval(api, create_deal_with_document(api, name="Газ Сервис (typed again)"))
    duplicate = pending_record(second)
    merged = api.ecm("steward-stas", "POST", f"/api/counterparties/{duplicate['id']}/merge",
                     json={"into_id": record["id"], "reason": "same company typed twice"})
    assert merged.status_code == 200 and merged.json() == {
        "id": duplicate["id"], "status": "merged", "quality_flags": duplicate["quality_flags"],
        "merged_into": record["id"], "changed": None}
    survivor = api.ecm("steward-stas", "GET", url).json()
    assert {"system": "crm", "id": second["org"]["id"]} in survivor["external_refs"]
    assert ecm_approval(api, second)["counterparty_id"] == record["id"]
    wait_until(lambda: api.crm(SALES, "GET", f"/api/organizations/{second['org']['id']}").json()["registry"]
               == {"id": record["id"], "status": "linked", "legal_name": "ООО «Газ-Сервис»"},
               timeout=60, message="the CRM follows the merge")

    sber = next(c for c in api.ecm("steward-stas", "GET", "/api/counterparties?status=verified").json()
                if c["inn"] == "7707083893")
    body = {"other_id": sber["id"], "reason": "different companies"}
    assert api.ecm("steward-stas", "POST", f"{url}/not-duplicate", json=body).json() == {"recorded": True}
    assert api.ecm("steward-stas", "POST", f"{url}/not-duplicate", json=body).json() == {"recorded": False}

    actions = [h["action"] for h in api.ecm("ecm-auditor", "GET", f"{url}/history").json()]
    assert actions == ["sync_created", "edited", "verified", "absorbed", "not_duplicate"]
    chain = api.ecm("ecm-auditor", "GET", "/api/history/verify").json()
    assert chain["intact"] is True and chain["entries"] >= len(actions)
    assert api.ecm("legal-lena", "GET", "/api/history/verify").status_code == 403


def test_bulk_load_through_the_api_reports_every_row(api):
    rows = "Код;Наименование;ИНН;КПП;ОГРН\nE2E-1;ООО «Север»;7708004767;770801001;1027700035769\nE2E-2;;;;\n"
    files = {"file": ("export.csv", rows.encode("cp1251"), "text/csv")}
    assert api.ecm("legal-lena", "POST", "/api/counterparties/bulk-loads", files=files).status_code == 403
    wrong = api.ecm("steward-stas", "POST", "/api/counterparties/bulk-loads",
                    files={"file": ("export.txt", b"x", "text/plain")})
    assert wrong.status_code == 422
    started = api.ecm("steward-stas", "POST", "/api/counterparties/bulk-loads", files=files,
                      data={"system": "erp", "verify_clean_rows": "true"})
    assert started.status_code == 202, started.text
    load_url = f"/api/counterparties/bulk-loads/{started.json()['id']}"
    done = wait_until(lambda: (s := api.ecm("steward-stas", "GET", load_url).json())["status"] != "running" and s,
                      timeout=60, message="bulk load finished")
    assert done["status"] == "done" and done["counts"] == {"created": 1, "error": 1}
    report = api.ecm("ecm-auditor", "GET", done["report_url"])
    assert report.status_code == 200 and "name is required" in report.text
    (party,) = api.ecm("steward-stas", "GET", "/api/counterparties?external_ref=erp:E2E-1").json()
    assert party["status"] == "verified" and party["name"] == "ООО «Север»"


def test_legal_hold_keeps_a_document_that_retention_would_dispose_of(api):
    # Runs last in this module: it disposes of every finished document past a far date.
    held = request_approval(api, create_deal_with_document(api, name="Под удержанием"))
    held_doc = ecm_approval(api, held)["document"]["id"]
    gone = request_approval(api, create_deal_with_document(api, name="На уничтожение"))
    gone_approval = ecm_approval(api, gone)
    assert approve_all(api, gone_approval["id"])["status"] == "approved"
    hold = {"reason": "court case А40-1/2026"}
    assert api.ecm("finance-fedor", "POST", f"/api/documents/{held_doc}/legal-hold",
                   json=hold).status_code == 403
    placed = api.ecm("legal-lena", "POST", f"/api/documents/{held_doc}/legal-hold", json=hold)
    assert placed.status_code == 200 and placed.json()["legal_hold"] is True
    for approval in api.ecm("legal-lena", "GET", "/api/approvals?status=in_progress&limit=1000").json():
        decide(api, approval["id"], "legal", "reject", comment="test module ends", reason="closing the test module")

    far = {"as_of": "2099-01-01T00:00:00Z", "dry_run": True}
    assert api.ecm("legal-lena", "POST", "/api/documents/disposals", json=far).status_code == 403
    preview = {d["id"]: d for d in api.ecm("ecm-admin", "POST", "/api/documents/disposals", json=far).json()
               ["documents"]}
    assert preview[held_doc]["reason"] == "under legal hold"
    assert preview[gone_approval["document"]["id"]]["eligible"] is True
    assert api.ecm("legal-lena", "GET", f"/api/documents/{gone_approval['document']['id']}/content").status_code \
        == 200  # a dry run changes nothing
    done = api.ecm("ecm-admin", "POST", "/api/documents/disposals", json={**far, "dry_run": False}).json()
    assert {d["id"] for d in done["documents"] if d["disposed"]} >= {gone_approval["document"]["id"]}
    gone_content = api.ecm("legal-lena", "GET", f"/api/documents/{gone_approval['document']['id']}/content")
    assert gone_content.status_code == 410 and "retention" in gone_content.json()["detail"]
    assert api.ecm("legal-lena", "GET", f"/api/documents/{held_doc}/content").status_code == 200
