"""The initial sync and the auditors' report against the real processes: the driver
(`bridgectl reconcile`, a real process) feeds every CRM organization to an ECM run; the
report shows linked, proposed, unlinked, conflict, duplicate and stale with evidence; it
exports CSV and XLSX; a stored snapshot reproduces byte for byte with its sha256; a run
resumes after its last handled organization; the page shows counts in real Chromium."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openpyxl import load_workbook
from playwright.sync_api import expect

from tests.e2e.conftest import running_system
from tests.e2e.journey import SALES, create_deal_with_document, request_approval, wait_crm_status
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql")


def bridgectl(system, api, *args) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRM_URL": system.crm_url, "ECM_URL": system.ecm_url,
           "BRIDGE_CRM_TOKEN": api.tokens["crm-integration"], "BRIDGE_ECM_TOKEN": api.tokens["ecm-integration"]}
    done = subprocess.run([sys.executable, "-m", "sync_bridge.bridgectl", "reconcile", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def org(api, **fields) -> dict:
    created = api.crm(SALES, "POST", "/api/organizations", json=fields)
    assert created.status_code == 201, created.text
    return created.json()


def test_initial_sync_report_exports_snapshot_and_resume(system, api, page):
    # Linked through the journey, then edited in the CRM: conflict (INN) and stale (name).
    conflicting = request_approval(api, create_deal_with_document(api, name="Сбер (ИНН поменяли)",
                                                                  inn="7707083893"))
    wait_crm_status(api, conflicting, "in_progress", "legal")
    stale = request_approval(api, create_deal_with_document(api, name="Устаревшая"))
    wait_crm_status(api, stale, "in_progress", "legal")
    time.sleep(1.1)
    assert api.crm(SALES, "PATCH", f"/api/organizations/{conflicting['org']['id']}",
                   json={"inn": "7736050003"}).status_code == 200
    assert api.crm(SALES, "PATCH", f"/api/organizations/{stale['org']['id']}",
                   json={"name": "Устаревшая (переименована)"}).status_code == 200
    latin = org(api, name="Sberbank Rossii")  # proposed: a similar name across scripts
    lonely = org(api, name="Незабудка и партнёры")  # unlinked: nothing like it
    twin = org(api, name="Сбербанк-2", inn="7707083893")  # links to the bank like the demo «Сбербанк»

    lines = bridgectl(system, api)
    run_id = lines[0]["run_id"]
    assert lines[0]["mode"] == "dry_run" and lines[-1]["finished"] is True
    total = api.crm(SALES, "GET", "/api/organizations", params={"limit": 1}).json()["total"]
    assert lines[-1]["done"] == total and len(lines) >= 3  # progress lines in between

    report = api.ecm("ecm-auditor", "GET", "/api/reconciliation/report", params={"limit": 1000}).json()
    states = {r["external_id"]: r for r in report["rows"]}
    assert states[conflicting["org"]["id"]]["state"] == "conflict"
    assert states[conflicting["org"]["id"]]["evidence"]["differ"] == ["inn"]
    assert states[stale["org"]["id"]]["state"] == "stale"
    assert states[latin["id"]]["state"] == "proposed" and states[latin["id"]]["score"] >= 70
    assert states[lonely["id"]]["state"] == "unlinked"
    assert states[twin["id"]]["state"] == "duplicate"  # the demo «Сбербанк» links to the same bank
    assert sum(report["counts"].values()) == total
    # A dry run wrote nothing to the registry.
    assert api.ecm("steward-stas", "GET", f"/api/counterparties?external_ref=crm:{lonely['id']}").json() == []

    exported = api.ecm("ecm-auditor", "GET", "/api/reconciliation/report", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert list(rows[0])[:5] == ["crm_organization_id", "state", "counterparty_id", "score", "evidence"]
    assert len(rows) == total
    book = load_workbook(io.BytesIO(api.ecm("ecm-auditor", "GET", "/api/reconciliation/report",
                                            params={"format": "xlsx"}).content), read_only=True)
    assert sum(1 for _ in book.active.iter_rows()) == total + 1

    snapshot = api.ecm("ecm-auditor", "POST", "/api/reconciliation/report/snapshots").json()
    stored = api.ecm("ecm-auditor", "GET", f"/api/reconciliation/report/snapshots/{snapshot['id']}")
    assert hashlib.sha256(stored.content).hexdigest() == snapshot["sha256"] == stored.headers["X-Content-SHA256"]
    assert stored.content == exported.content  # the report reproduces from its snapshot
    assert api.ecm("steward-stas", "POST", "/api/reconciliation/report/snapshots").status_code == 403

    # Apply: pending records and links are written; a second run sees them.
    applied = bridgectl(system, api, "--apply")
    assert applied[-1]["finished"] is True
    (pending,) = api.ecm("steward-stas", "GET", f"/api/counterparties?external_ref=crm:{lonely['id']}").json()
    assert pending["status"] == "pending_verification"
    wait_until(lambda: (api.crm(SALES, "GET", f"/api/organizations/{lonely['id']}").json()["registry"] or {})
               .get("status") == "pending_verification", timeout=60, message="the CRM learns the pending record")

    # Resume: a run fed one batch by hand, then continued by the driver after its cursor.
    run = api.ecm("ecm-admin", "POST", "/api/reconciliation/runs", json={"mode": "dry_run"}).json()
    first = api.crm("crm-integration", "GET", "/api/organizations", params={"after_id": "", "limit": 2}).json()
    batch = [{k: o[k] for k in ("id", "name", "inn", "kpp", "ogrn")} for o in first["items"]]
    api.ecm("ecm-admin", "POST", f"/api/reconciliation/runs/{run['id']}/batches", json={"organizations": batch})
    again = api.ecm("ecm-admin", "POST", f"/api/reconciliation/runs/{run['id']}/batches",
                    json={"organizations": batch}).json()
    assert again["handled"] == 0 and again["skipped"] == 2  # resending a batch changes nothing
    resumed = bridgectl(system, api, "--resume", run["id"])
    assert resumed[0]["resumed_after"] == batch[-1]["id"] and resumed[-1]["done"] == total

    page.goto(f"{system.ecm_url}/ui/login?next=/ui/reconciliation")
    page.fill("#token", api.tokens["ecm-auditor"])
    page.click("button[type=submit]")
    expect(page.locator("td[data-state=unlinked]")).to_be_visible()
    page.click("#counts a:text('conflict')")
    expect(page.locator("#rows tbody tr")).to_have_count(1)
    expect(page.locator("#rows")).to_contain_text("Сбер (ИНН поменяли)")
    assert run_id != run["id"]
