"""Operating the streams with bridgectl against real processes on PostgreSQL: pause
and resume a direction, dead letters listed, shown and replayed after a fix, outbox
replay, status."""

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner

from infra.settings import ServiceSettings
from tests.e2e.conftest import running_system
from tests.e2e.journey import (
    create_deal_with_document,
    crm_approval,
    decide,
    ecm_approval,
    request_approval,
    wait_crm_status,
)
from tests.support import alerts, metrics
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    # Few, short retries: an outage is waited out past them, a failing call dead-letters quickly.
    yield from running_system(tmp_path_factory, "postgresql",
                              extra_env={"BRIDGE_MAX_ATTEMPTS": "2", "BRIDGE_RETRY_MAX_WAIT": "0.2"})



def bridgectl(system, *args: str, check: bool = True, **settings: str) -> subprocess.CompletedProcess:
    """bridgectl against the system, with `settings` (environment variables) changed."""
    result = subprocess.run([sys.executable, "-m", "sync_bridge.bridgectl", *args], env={**system.env(), **settings},
                            capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def status(system) -> dict:
    return json.loads(bridgectl(system, "status", "--json").stdout)


def ecm_has(api, flow) -> bool:
    return bool(api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json())


def paused_as_alerts_see_it(system) -> dict[str, float]:
    """The series the DirectionPausedLong alert (deploy/prometheus/alerts.yml) selects."""
    text = httpx.get(f"{system.bridge_url}/metrics", timeout=10).text
    return {sample.labels["direction"]: sample.value for sample in alerts.selected("DirectionPausedLong", text)}


def test_pausing_a_direction_holds_messages_and_resuming_delivers_them_in_order(api, system):
    # A bridge keeps both directions shut until it has read the control topic; only once
    # they are open does "the bridge sees the pause" below mean this pause.
    wait_until(lambda: set(httpx.get(f"{system.bridge_url}/health").json()["directions"].values()) == {"open"},
               timeout=60, message="bridge has read the control topic")
    bridgectl(system, "pause", "crm-to-ecm", "--reason", "ECM maintenance")
    wait_until(lambda: __import__("httpx").get(f"{system.bridge_url}/health").json()["paused"]["crm-to-ecm"],
               timeout=30, message="bridge sees the pause")
    first = request_approval(api, create_deal_with_document(api, name="Paused"))
    # Same organization, same partition: the order of these requests must survive the pause.
    flows = [first] + [request_approval(api, create_deal_with_document(api, name=f"Paused {i}", org=first["org"]))
                       for i in range(1, 4)]
    time.sleep(3)
    assert not any(ecm_has(api, f) for f in flows)
    assert all(crm_approval(api, f)["status"] == "requested" for f in flows)
    report = status(system)
    assert report["directions"]["crm-to-ecm"]["paused"] is True
    assert report["directions"]["crm-to-ecm"]["reason"] == "ECM maintenance"
    assert next(t for t in report["topics"] if t["topic"] == "crm.events")["lag"] >= 4
    assert "PAUSED" in bridgectl(system, "status").stdout
    assert paused_as_alerts_see_it(system) == {"crm-to-ecm": 1, "ecm-to-crm": 0}

    bridgectl(system, "resume", "crm-to-ecm")
    for flow in flows:
        wait_crm_status(api, flow, "in_progress", "legal")
    assert paused_as_alerts_see_it(system) == {"crm-to-ecm": 0, "ecm-to-crm": 0}
    approvals = [ecm_approval(api, f) for f in flows]
    assert [a["created_at"] for a in approvals] == sorted(a["created_at"] for a in approvals)
    assert len({a["counterparty_id"] for a in approvals}) == 1


def bridge_batches(system, direction: str) -> tuple[float, float]:
    """(batches, events) the bridge has handled in `direction` so far (bridge_batch_events)."""
    figures = {"count": 0.0, "sum": 0.0}
    for line in httpx.get(f"{system.bridge_url}/metrics", timeout=10).text.splitlines():
        for figure in figures:
            if line.startswith(f'bridge_batch_events_{figure}{{direction="{direction}"}}'):
                figures[figure] = float(line.split()[-1])
    return figures["count"], figures["sum"]


def partition_of(key: str, partitions: int) -> int:
    """The partition the relays' producer (aiokafka's default partitioner) gives a key."""
    every = list(range(partitions))
    return DefaultPartitioner()(key.encode(), every, every)


def test_events_held_on_several_partitions_are_handled_in_one_batch(api, system):
    partitions = int(system.env().get("KAFKA_TOPIC_PARTITIONS",
                                      ServiceSettings.model_fields["topic_partitions"].default))
    bridgectl(system, "pause", "crm-to-ecm", "--reason", "batching check")
    wait_until(lambda: httpx.get(f"{system.bridge_url}/health").json()["paused"]["crm-to-ecm"],
               timeout=30, message="bridge sees the pause")
    # Organizations (the events' keys) until the held events lie on at least 5 partitions.
    assert partitions >= 5, "this check needs at least 5 partitions per topic"
    flows = []
    while len(flows) < 8 or len({partition_of(f["org"]["id"], partitions) for f in flows}) < 5:
        assert len(flows) < 60, "keys kept landing on fewer than 5 partitions"
        flows.append(request_approval(api, create_deal_with_document(api, name=f"Held {len(flows)}")))
    spread = len({partition_of(f["org"]["id"], partitions) for f in flows})
    wait_until(lambda: next(t for t in status(system)["topics"] if t["topic"] == "crm.events")["lag"] >= len(flows),
               timeout=30, message="the events wait at the bridge")
    time.sleep(2)  # and the bridge has fetched them
    batches, events = bridge_batches(system, "crm-to-ecm")

    bridgectl(system, "resume", "crm-to-ecm")
    for flow in flows:
        wait_crm_status(api, flow, "in_progress", "legal")
    batches_after, events_after = bridge_batches(system, "crm-to-ecm")
    assert events_after - events == len(flows)
    # The batch taken when the first event came (it waited for the resume), then the rest
    # together. An actor per partition would need at least one batch per partition.
    assert batches_after - batches <= 3 < spread, (batches_after - batches, spread)


def dead_letters(system) -> list[dict]:
    return json.loads(bridgectl(system, "dlq", "list", "--json").stdout)


def bridge_failures(system, error_class: str) -> float:
    text = httpx.get(f"{system.bridge_url}/metrics", timeout=10).text
    return sum(sample.value for sample in metrics.samples(text, "bridge_delivery_failures_total")
               if sample.labels.get("consumer") == "sync-bridge:crm-to-ecm"
               and sample.labels.get("error_class") == error_class)


def test_an_ecm_outage_is_waited_out_and_dead_letters_nothing(api, system):
    """The ECM goes away while a rep asks for approval. The bridge tried the transfer a
    few times (here 2) and dead-lettered the request: a good request left on the
    dead-letter topic until someone replayed it. It now keeps trying while the ECM is
    away, and the request goes through once it is back."""
    letters = len(dead_letters(system))
    system.kill("ecm")
    flow = request_approval(api, create_deal_with_document(api, name="During the outage"))
    wait_until(lambda: bridge_failures(system, "ConnectError") >= 6, timeout=60,
               message="the bridge trying, well past its 2 attempts")
    assert len(dead_letters(system)) == letters
    system.start_process("ecm")
    system.wait_healthy(names=("ecm",))
    wait_crm_status(api, flow, "in_progress", "legal")
    assert len(dead_letters(system)) == letters


def test_a_bridge_told_to_stop_while_it_waits_for_the_ecm_stops_and_loses_nothing(api, system):
    """faust waited, as the worker stopped, for the agent to finish what it held, that is,
    for the outage to end: a SIGTERM ended in the supervisor's SIGKILL. The wait is now
    bounded while stopping (BRIDGE_STOP_WAIT_SECONDS, 5 s); what was not handled was not
    committed either, and comes again to the next worker."""
    log = system.log_dir / "bridge.log"
    seen = len(log.read_text().splitlines())
    system.kill("ecm")
    flows = [request_approval(api, create_deal_with_document(api, name=f"Stopped while waiting {i}"))
             for i in range(3)]
    wait_until(lambda: bridge_failures(system, "ConnectError") and '"waiting_for_dependency"' in log.read_text(),
               timeout=60, message="the bridge waiting for the ECM")
    system.kill("bridge", signal.SIGTERM)  # waits up to 15 s for the process to end, or raises
    assert system.processes["bridge"].returncode == 0
    events = [json.loads(line) for line in log.read_text().splitlines()[seen:]]
    (stopped,) = [e for e in events if e["event"] == "stopping_with_events_unhandled"]
    assert stopped["events"] >= 1
    system.start_process("ecm")
    system.start_process("bridge")
    system.wait_healthy(names=("ecm", "bridge"))
    for flow in flows:
        wait_crm_status(api, flow, "in_progress", "legal", timeout=90)
        assert len(api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json()) == 1


def test_dead_letters_are_listed_shown_and_replayed_after_the_fix(api, system):
    """A CRM file damaged on its disk (its bytes are no longer those the rep sent) cannot
    be sent: the bridge dead-letters the request at once, with the reason. Once the file
    is restored (from a backup), a replay sends it."""
    flow = create_deal_with_document(api, name="Damaged on disk")
    sha = flow["document"]["sha256"]
    stored = Path(system.env()["CRM_FILES_DIR"]) / sha[:2] / sha
    stored.write_bytes(b"damaged on the disk")
    request_approval(api, flow)
    letter = wait_until(
        lambda: [row for row in dead_letters(system)
                 if row["type"] == "crm.approval_requested" and row["error_class"] == "PermanentError"],
        timeout=60, message="dead letter of the failed transfer")[0]
    assert letter["source"].startswith("crm.events:") and letter["attempts"] == "1"
    shown = json.loads(bridgectl(system, "dlq", "show", letter["id"]).stdout)
    assert shown["payload"]["payload"]["approval_request_id"] == flow["request"]["id"]
    assert shown["headers"]["dlq.consumer"] == "sync-bridge:crm-to-ecm"
    assert "content hash" in shown["headers"]["dlq.error.message"]
    assert bridgectl(system, "dlq", "replay", check=False).returncode == 2  # no selection, nothing replayed

    stored.write_bytes(flow["content"])  # restored
    assert "replayed 1" in bridgectl(system, "dlq", "replay", "--id", letter["id"]).stdout
    wait_crm_status(api, flow, "in_progress", "legal")
    # Replaying the same letter again (an operator's double click) duplicates nothing.
    bridgectl(system, "dlq", "replay", "--id", letter["id"])
    wait_until(lambda: status(system)["topics"][0]["lag"] == 0, timeout=60, message="bridge caught up")
    time.sleep(2)
    assert len(api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json()) == 1
    assert bridgectl(system, "dlq", "show", "crm.events.dlq:9:999", check=False).returncode == 2


def test_status_lists_each_group_s_members_and_says_when_nobody_reads_waiting_messages(api, system):
    def groups() -> dict[str, dict]:
        return {g["group"]: g for g in status(system)["groups"]}

    wait_until(lambda: all(g["state"] == "Stable" and len(g["members"]) == 1 for g in groups().values()),
               timeout=60, message="every group with its one member")
    assert set(groups()) == {"sync-bridge", "ecm-service", "crm-service"}
    assert groups()["sync-bridge"]["topics"] == ["crm.events", "ecm.events"]
    assert "NOBODY READING" not in bridgectl(system, "status").stdout
    # A bridge group that no worker runs (a worker deployed with another BRIDGE_APP_ID):
    # the CRM's events wait for it, and nobody is there to read them.
    request_approval(api, create_deal_with_document(api, name="Read by nobody"))
    found = bridgectl(system, "status", "--json", BRIDGE_APP_ID="sync-bridge-elsewhere").stdout
    (group,) = [g for g in json.loads(found)["groups"] if g["group"] == "sync-bridge-elsewhere"]
    assert group["members"] == [] and group["lag"] > 0, group
    text = bridgectl(system, "status", BRIDGE_APP_ID="sync-bridge-elsewhere").stdout
    assert f"NOBODY READING: {group['lag']} message(s) wait" in text


@pytest.mark.parametrize(("setting", "command", "said"), [
    ("KAFKA_BOOTSTRAP_SERVERS", ["status"], "the broker at 127.0.0.1:9 (KAFKA_BOOTSTRAP_SERVERS)"),
    ("CRM_DATABASE_URL", ["outbox", "replay", "--service", "crm", "--since", "2026-12-01T00:00:00Z"],
     "a database (CRM_DATABASE_URL, ECM_DATABASE_URL)"),
    ("ECM_URL", ["reconcile"], "http://127.0.0.1:9/ (CRM_URL, ECM_URL)"),
])
def test_bridgectl_says_in_one_line_what_cannot_be_reached(system, setting, command, said):
    away = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "ECM_URL": "http://127.0.0.1:9",
            "CRM_DATABASE_URL": "postgresql+asyncpg://crm@127.0.0.1:9/crm"}[setting]
    found = bridgectl(system, *command, check=False, **{setting: away})
    assert found.returncode == 1, found.stderr
    (line,) = found.stderr.strip().splitlines()
    assert line.startswith(f"bridgectl: {said} cannot be reached ("), line


def test_outbox_replay_republishes_sent_rows_without_duplicating_effects(api, system):
    since = datetime.now(timezone.utc).isoformat()
    flow = request_approval(api, create_deal_with_document(api, name="Republished"))
    approval = ecm_approval(api, flow)
    wait_crm_status(api, flow, "in_progress", "legal")
    out = bridgectl(system, "outbox", "replay", "--service", "crm", "--since", since).stdout
    assert "1 outbox row(s)" in out
    out = bridgectl(system, "outbox", "replay", "--service", "ecm", "--since", since).stdout
    assert "2 outbox row(s)" in out  # counterparty synced + approval started
    wait_until(lambda: all(s["unsent"] == 0 for s in status(system)["outbox"].values()), timeout=30,
               message="relays republished")
    wait_until(lambda: sum(t["lag"] for t in status(system)["topics"]) == 0, timeout=60, message="drained")
    again = api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json()
    assert [a["id"] for a in again] == [approval["id"]]
    assert crm_approval(api, flow)["status"] == "in_progress"
    assert bridgectl(system, "outbox", "replay", "--service", "crm", "--since", "2026-01-01T00:00:00",
                     check=False).returncode == 2  # a time without a zone is refused
    before_any = bridgectl(system, "outbox", "replay", "--service", "crm", "--since", "2020-01-01T00:00:00+00:00",
                           "--until", "2020-01-02T00:00:00+00:00").stdout
    assert "crm: 0 outbox row(s)" in before_any and "CRM_OUTBOX_KEEP_DAYS are pruned" in before_any
    assert "pruned" not in out  # a window the outbox still holds: no note


def test_transferring_responsibility_moves_in_flight_approvals_to_the_new_manager(api, system):
    anna = api.crm("sales-anna", "GET", "/api/me").json()
    boris = api.crm("sales-boris", "GET", "/api/me").json()
    flow = request_approval(api, create_deal_with_document(api, name="Handed over"))
    approval = ecm_approval(api, flow)
    assert approval["initiator_ref"] == f"crm:{anna['id']}"
    wait_crm_status(api, flow, "in_progress", "legal")

    org_id = flow["org"]["id"]
    body = {"new_owner_id": boris["id"], "move_open_deals": True}
    assert api.crm("sales-boris", "POST", f"/api/organizations/{org_id}/transfer", json=body).status_code == 403
    bad = api.crm("sales-anna", "POST", f"/api/organizations/{org_id}/transfer", json={"new_owner_id": "nobody"})
    assert bad.status_code == 422
    moved = api.crm("sales-anna", "POST", f"/api/organizations/{org_id}/transfer", json=body)
    assert moved.status_code == 200, moved.text
    assert moved.json()["moved_deal_ids"] == [flow["deal"]["id"]]
    assert api.crm("sales-boris", "GET", f"/api/deals/{flow['deal']['id']}").json()["owner_id"] == boris["id"]
    (entry,) = api.crm("sales-boris", "GET", f"/api/organizations/{org_id}/history").json()
    assert entry["kind"] == "responsibility_transferred" and entry["actor_id"] == anna["id"]

    path = f"/api/approvals/{approval['id']}"
    reassigned = wait_until(
        lambda: (a := api.ecm("legal-lena", "GET", path).json())["initiator_ref"] == f"crm:{boris['id']}" and a,
        timeout=60, message="ECM initiator follows the transfer")
    (history,) = [h for h in reassigned["history"] if h["action"] == "initiator_changed"]
    assert history["actor"] == f"crm:{anna['id']}"
    assert history["data"] == {"from": f"crm:{anna['id']}", "to": f"crm:{boris['id']}"}

    decide(api, approval["id"], "legal")
    wait_crm_status(api, flow, "in_progress", "finance")
    boris_news = wait_until(lambda: [n for n in api.crm("sales-boris", "GET", "/api/notifications").json()
                                     if n["approval_request_id"] == flow["request"]["id"]],
                            timeout=30, message="notification to the new manager")
    assert any("finance" in n["text"] for n in boris_news)
    anna_news = [n for n in api.crm("sales-anna", "GET", "/api/notifications").json()
                 if n["approval_request_id"] == flow["request"]["id"]]
    assert not any("finance" in n["text"] for n in anna_news)


def test_a_service_started_while_the_broker_is_away_serves_its_users_and_catches_up(api, system):
    """The CRM restarts while the broker does not answer (frozen with SIGSTOP). It is
    ready within seconds (database yes, broker no), its liveness holds, a rep's approval
    request is accepted and kept in the outbox, and once the broker answers again it goes
    through. Before, the CRM's start waited 60 s for the broker and then failed: a
    broker outage kept sales out of the CRM."""
    import signal

    flow = create_deal_with_document(api, name="ООО «Без брокера»")
    broker = system.processes["broker"]
    broker.send_signal(signal.SIGSTOP)
    try:
        system.kill("crm")
        system.start_process("crm")
        started = time.monotonic()
        wait_until(lambda: _status(f"{system.crm_url}/ready") == 200, timeout=30, interval=0.5,
                   message="the CRM ready without its broker")
        ready_after = time.monotonic() - started
        assert httpx.get(f"{system.crm_url}/ready", timeout=10).json() == {
            "ready": True, "database": True, "broker": False, "migrations_at_head": True}
        assert _status(f"{system.crm_url}/health") == 503 and _status(f"{system.crm_url}/live") == 200
        request_approval(api, flow)
        assert crm_approval(api, flow)["status"] == "requested"
    finally:
        broker.send_signal(signal.SIGCONT)
    wait_crm_status(api, flow, "in_progress", "legal", timeout=120)
    system.wait_healthy(names=("crm",), timeout=60)
    print(f"\nthe CRM was ready {ready_after:.1f} s after its start, the broker frozen")


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return None
