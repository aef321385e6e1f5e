"""A real Prometheus (Debian 12's package, 2.42; the compose file runs 2.54.1) scrapes
the running processes with the deployed scrape jobs and evaluates the deployed alerting
rules (deploy/prometheus/alerts.yml) on their real series: every rule evaluates without
error, a healthy system fires nothing, and the faults the rules are for make them
pending or firing with the labels the runbook needs. promtool's unit tests
(tests/contract/test_alert_rules.py) check the timings on synthetic series; this checks
that the series the code really exports make the expressions work."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from deploy.broker import free_port
from deploy.processes import start_child, stop_child
from schemas import ecm_commands
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import encode
from schemas.topics import CRM_EVENTS, ECM_COMMANDS
from tests.e2e.conftest import running_system
from tests.e2e.journey import create_deal_with_document, request_approval, wait_crm_status
from tests.e2e.test_operations import bridgectl
from tests.support import alerts
from tests.support.kafka import produce
from tests.support.polling import wait_until

PROMETHEUS = "/usr/bin/prometheus"  # Debian's `prometheus` package; `make test` installs it
DASHBOARD = alerts.RULES_FILE.parents[1] / "grafana" / "bridge-dashboard.json"
# Panels with no series on a healthy system that has pruned nothing yet (their label
# values, error classes and tables, appear with the first failure or pruned row).
UNSEEN_PANELS = {"Delivery failures (retries) per second", "Outbox and inbox rows pruned per hour (CRM, ECM)"}
DEAD_LETTERS = "Dead-lettered per minute"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "sqlite")


def scrape_config(system) -> dict:
    """The deployed Prometheus configuration with each job's discovery replaced by the
    address its process listens on here, scraped and evaluated every second."""
    deployed = alerts.deployed_config()
    here = {"crm": system.crm_url, "ecm": system.ecm_url, "bridge": system.bridge_url}
    jobs = []
    for job in deployed["scrape_configs"]:
        assert job["job_name"] in here, f"a scrape job this test does not know: {job['job_name']}"
        kept = {k: v for k, v in job.items() if not k.endswith("_sd_configs") and k != "static_configs"}
        jobs.append({**kept, "static_configs": [{"targets": [urlparse(here[job["job_name"]]).netloc]}]})
    return {"global": {**deployed.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": deployed["rule_files"], "scrape_configs": jobs}


@pytest.fixture(scope="module")
def prometheus(system, tmp_path_factory):
    home: Path = tmp_path_factory.mktemp("prometheus")
    (home / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(system)))
    port = free_port()
    process = start_child([PROMETHEUS, f"--config.file={home / 'prometheus.yml'}",
                           f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                          env=None, log_file=home / "prometheus.log")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (home / "prometheus.log").read_text()[-2000:]
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=30, message="Prometheus ready")
    yield url
    stop_child(process)


def query(prometheus: str, path: str, **params) -> dict | list:
    body = httpx.get(f"{prometheus}/api/v1/{path}", params=params, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]


def rules(prometheus: str) -> list[dict]:
    return [rule for group in query(prometheus, "rules", type="alert")["groups"] for rule in group["rules"]]


def active(prometheus: str) -> list[dict]:
    """Alerts pending or firing: [{name, state, labels}]."""
    return [{"name": a["labels"]["alertname"], "state": a["state"], "labels": a["labels"]}
            for a in query(prometheus, "alerts")["alerts"]]


def evaluated_since(prometheus: str, moment: float) -> bool:
    """Every rule evaluated (twice, to be past a scrape in between) since `moment`."""
    def seconds(stamp: str) -> float:
        return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return all(seconds(rule["lastEvaluation"]) >= moment + 2 for rule in rules(prometheus))


def panels() -> dict[str, str]:
    """The Grafana dashboard's queries by panel title."""
    board = json.loads(DASHBOARD.read_text())
    return {panel["title"]: target["expr"] for panel in board["panels"] for target in panel.get("targets", [])}


def wait_active(prometheus: str, name: str, state: str, **labels) -> dict:
    def found():
        return next((a for a in active(prometheus) if a["name"] == name and a["state"] == state
                     and all(a["labels"].get(k) == v for k, v in labels.items())), None)
    return wait_until(found, timeout=30, message=f"{name} {state} {labels} in Prometheus: {active(prometheus)}")


def test_prometheus_scrapes_every_process_and_every_rule_evaluates_cleanly_on_a_healthy_system(
        api, system, prometheus):
    jobs = {"crm", "ecm", "bridge"}
    wait_until(lambda: {t["labels"]["job"] for t in query(prometheus, "targets")["activeTargets"]
                        if t["health"] == "up"} == jobs, timeout=30, message="every process scraped")
    flow = request_approval(api, create_deal_with_document(api, name="Watched"))
    wait_crm_status(api, flow, "in_progress", "legal")
    after = time.time()
    wait_until(lambda: evaluated_since(prometheus, after), timeout=30, message="rules evaluated after the journey")

    loaded = rules(prometheus)
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in alerts.rule_list())
    assert [(r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []
    # What the rules read is there: the outbox ages of both services, their dependencies
    # and refusals, and the bridge's pause gauge.
    ages = query(prometheus, "query", query="bridge_outbox_oldest_unsent_age_seconds")["result"]
    assert {series["metric"]["service"] for series in ages} == {"crm", "ecm"}
    reached = query(prometheus, "query", query="service_dependency_up")["result"]
    assert {(s["metric"]["service"], s["metric"]["dependency"]): s["value"][1] for s in reached} == {
        (service, dependency): "1" for service in ("crm", "ecm") for dependency in ("database", "broker")}
    refused = query(prometheus, "query", query="service_requests_refused_total")["result"]
    assert {(s["metric"]["service"], s["metric"]["reason"], s["value"][1]) for s in refused} == {
        (service, reason, "0") for service in ("crm", "ecm") for reason in ("database_unavailable", "storage_full")}
    pauses = query(prometheus, "query", query="bridge_direction_paused")["result"]
    assert {s["metric"]["direction"]: s["value"][1] for s in pauses} == {"crm-to-ecm": "0", "ecm-to-crm": "0"}
    waiting = query(prometheus, "query", query="ecm_withdrawal_before_start_oldest_age_seconds")["result"]
    assert [(s["metric"]["job"], s["value"][1]) for s in waiting] == [("ecm", "0")]
    # Nothing fires or is pending on a healthy system.
    assert active(prometheus) == []
    # Every dashboard panel's query runs, and charts something unless it charts a fault.
    charted = {title: query(prometheus, "query", query=expr)["result"] for title, expr in panels().items()}
    assert UNSEEN_PANELS | {DEAD_LETTERS} <= set(charted)
    assert sorted(title for title, result in charted.items() if not result) == sorted(UNSEEN_PANELS)
    assert {float(series["value"][1]) for series in charted[DEAD_LETTERS]} == {0.0}  # every consumer, from its start


def test_the_faults_the_rules_are_for_raise_them_in_prometheus(api, system, prometheus):
    # A message the bridge cannot read: DeadLetters fires at once (it has no `for`).
    asyncio.run(produce(system.bootstrap_servers, CRM_EVENTS, b"not json, for the alert"))
    wait_active(prometheus, "DeadLetters", "firing", topic=CRM_EVENTS, consumer="sync-bridge:crm-to-ecm")
    # The dashboard charts that first dead letter of its series too.
    letters = query(prometheus, "query", query=panels()[DEAD_LETTERS])["result"]
    assert [(series["metric"]["consumer"], series["metric"]["topic"]) for series in letters
            if float(series["value"][1]) > 0] == [("sync-bridge:crm-to-ecm", CRM_EVENTS)]

    # A withdrawal whose approval's start never reached the ECM: kept, counted and aged on
    # the ECM's series that WithdrawalWaitsForItsStart reads (it fires after an hour:
    # promtool's tests); the admin lists it and lets it go, and the series go back to 0.
    request = ExternalRef(system="crm", id=str(uuid.uuid4()))
    lone = new_envelope(type=ecm_commands.WITHDRAW_APPROVAL, schema_version=1, source="crm-service",
                        correlation_id="alert-check", payload=ecm_commands.WithdrawApprovalV1(
                            external_ref=request, withdrawn_by_ref=ExternalRef(system="crm", id="rep"),
                            withdrawn_at=datetime.now(timezone.utc), reason="deal lost"))
    asyncio.run(produce(system.bootstrap_servers, ECM_COMMANDS, encode(lone), key=request.id.encode()))

    def series(name: str) -> float | None:
        found = query(prometheus, "query", query=name)["result"]
        return float(found[0]["value"][1]) if found else None

    wait_until(lambda: series("ecm_withdrawals_before_start") == 1
               and series("ecm_withdrawal_before_start_oldest_age_seconds") > 0, timeout=60,
               message="the kept withdrawal counted and aged in Prometheus")
    kept = api.ecm("ecm-admin", "GET", "/api/admin/withdrawals-before-start").json()
    assert [item["request_ref"]["id"] for item in kept["items"]] == [request.id]
    assert api.ecm("ecm-admin", "DELETE", f"/api/admin/withdrawals-before-start/crm/{request.id}").status_code == 200
    wait_until(lambda: series("ecm_withdrawals_before_start") == 0
               and series("ecm_withdrawal_before_start_oldest_age_seconds") == 0, timeout=60,
               message="the series back to 0 once the admin let it go")

    # An operator's pause: DirectionPausedLong is pending (it fires after an hour); the
    # resume clears it.
    bridgectl(system, "pause", "ecm-to-crm", "--reason", "alert check")
    wait_active(prometheus, "DirectionPausedLong", "pending", direction="ecm-to-crm")
    bridgectl(system, "resume", "ecm-to-crm")
    wait_until(lambda: not [a for a in active(prometheus) if a["name"] == "DirectionPausedLong"], timeout=30,
               message="DirectionPausedLong cleared by the resume")

    # A process gone: ProcessDown pending for its job, and for the only bridge worker,
    # NoBridgeWorker too; both clear once it is back.
    for name in ("ecm", "bridge"):
        system.kill(name, signal.SIGKILL)
        wait_active(prometheus, "ProcessDown", "pending", job=name)
        if name == "bridge":
            wait_active(prometheus, "NoBridgeWorker", "pending")
        else:
            assert not [a for a in active(prometheus) if a["name"] == "NoBridgeWorker"]
        system.start_process(name)
        system.wait_healthy(timeout=90, names=(name,))
        wait_until(lambda: not [a for a in active(prometheus) if a["name"] in ("ProcessDown", "NoBridgeWorker")],
                   timeout=30, message=f"ProcessDown cleared once {name} is back")

    # The system still works after it all.
    flow = request_approval(api, create_deal_with_document(api, name="Watched after"))
    wait_crm_status(api, flow, "in_progress", "legal", timeout=90)
