"""A bridge worker that waits longer than faust's `broker_max_poll_interval` (an ECM
outage waited out, a direction paused) with more events arriving than its stream buffer
holds stops fetching, and its consumer takes it out of the group. It must come back by
itself once the wait is over: before, it never rejoined and its partitions were left
unread, with nothing in its logs after a failed commit. Real processes on PostgreSQL,
with the interval and the buffer made small so that a test can outlast them."""

import json
import time

import httpx
import pytest

from deploy.local_run import LOCAL_SESSION_TIMEOUT_MS
from tests.e2e.conftest import running_system
from tests.e2e.journey import create_deal_with_document, crm_approval, request_approval
from tests.e2e.test_operations import bridgectl, dead_letters
from tests.support.polling import wait_until

INTERVAL = 3


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql", extra_env={
        "BRIDGE_MAX_POLL_INTERVAL": str(INTERVAL), "BRIDGE_STREAM_BUFFER_SIZE": "2",
        "BRIDGE_MAX_ATTEMPTS": "2", "BRIDGE_RETRY_MAX_WAIT": "0.5"})


def bridge_events(system, name: str) -> list[dict]:
    lines = (system.log_dir / "bridge.log").read_text().splitlines()
    return [event for event in (json.loads(line) for line in lines if line.startswith("{"))
            if event.get("event") == name]


def requests_while_held(api, count: int) -> list[dict]:
    """More requests than the worker's batch and buffer hold, on several partitions."""
    return [request_approval(api, create_deal_with_document(api, name=f"Held long {i}")) for i in range(count)]


def all_delivered_once(api, system, flows: list[dict]) -> None:
    wait_until(lambda: all(crm_approval(api, f)["status"] == "in_progress" for f in flows), timeout=90,
               message="every request in progress")
    for flow in flows:
        found = api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json()
        assert len(found) == 1, flow["request"]["id"]
    assert dead_letters(system) == []


def wait_past_the_interval() -> None:
    """Long enough for the waiting worker to be taken out of its group (its buffer full,
    then `INTERVAL` without a fetch, checked on each 1-s heartbeat), and then for the local
    broker to let its old membership go: Tansu numbers generations from 0, and aiokafka
    sends no LeaveGroup for generation 0, so a worker that rejoined sooner waited for its
    SyncGroup (README, Broker quirks). On Kafka proper the worker leaves at once."""
    time.sleep(INTERVAL + 2 + LOCAL_SESSION_TIMEOUT_MS / 1000 + 2)


def left_and_rejoined(system, before: int) -> None:
    """What the worker logged for its operators: taken out, then back."""
    left = bridge_events(system, "worker_left_group_while_waiting")
    assert len(left) > before and left[-1]["idle_seconds"] >= INTERVAL
    assert left[-1]["service"] == "bridge"  # logged on faust's consumer thread
    assert len(bridge_events(system, "worker_rejoining_group")) > before


def group_state(system) -> str:
    """Where the worker says, on its `/health`, it stands in its consumer group."""
    return httpx.get(f"{system.bridge_url}/health").json()["group"]["state"]


def test_an_outage_longer_than_the_poll_interval_is_waited_out(api, system):
    wait_until(lambda: set(httpx.get(f"{system.bridge_url}/health").json()["directions"].values()) == {"open"},
               timeout=60, message="bridge has read the control topic")
    assert group_state(system) == "member"
    system.kill("ecm")
    flows = requests_while_held(api, 20)
    wait_until(lambda: group_state(system) == "out_of_group", timeout=30,
               message="the waiting worker's /health to say it is out of its group")
    wait_past_the_interval()
    assert group_state(system) == "out_of_group"  # for as long as the outage lasts
    system.start_process("ecm")
    system.wait_healthy(names=("ecm",))
    all_delivered_once(api, system, flows)
    left_and_rejoined(system, 0)
    wait_until(lambda: group_state(system) == "member", timeout=30, message="the worker back in its group")


def test_a_pause_longer_than_the_poll_interval_resumes(api, system):
    before = len(bridge_events(system, "worker_left_group_while_waiting"))
    bridgectl(system, "pause", "crm-to-ecm", "--reason", "a long maintenance")
    wait_until(lambda: httpx.get(f"{system.bridge_url}/health").json()["paused"]["crm-to-ecm"],
               timeout=30, message="bridge sees the pause")
    flows = requests_while_held(api, 20)
    wait_past_the_interval()
    bridgectl(system, "resume", "crm-to-ecm")
    all_delivered_once(api, system, flows)
    left_and_rejoined(system, before)
