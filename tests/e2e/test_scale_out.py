"""Two bridge workers share the partitions; one is killed during a flow; after the
rebalance nothing is lost or duplicated."""

import signal
import time

import httpx
import pytest

from deploy.broker import free_port
from tests.e2e.conftest import running_system
from tests.e2e.journey import create_deal_with_document, request_approval, wait_crm_status
from tests.e2e.test_reliability import ecm_counts, wait_drained
from tests.support.metrics import samples
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql")


def assigned(url: str) -> set[str]:
    try:
        return set(httpx.get(f"{url}/health", timeout=2).json()["assigned_partitions"])
    except httpx.HTTPError:
        return set()


def lag_partitions(url: str) -> set[str]:
    """The partitions a worker reports bridge_consumer_lag for on its /metrics."""
    page = httpx.get(f"{url}/metrics", timeout=5).text
    return {f"{s.labels['topic']}:{s.labels['partition']}" for s in samples(page, "bridge_consumer_lag")}


def pause_gauge(page: str) -> dict[str, float]:
    return {s.labels["direction"]: s.value for s in samples(page, "bridge_direction_paused")}


def watch_start(url: str, timeout: float = 90) -> list[tuple[dict, dict, dict]]:
    """What a starting worker reports, (directions, paused, the pause gauge's series) per
    answer of /health, until it holds partitions and knows the operators' decisions."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # /metrics first: a worker that still says "starting" afterwards was starting then too.
            page = httpx.get(f"{url}/metrics", timeout=5).text
            health = httpx.get(f"{url}/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        seen.append((health["directions"], health["paused"], pause_gauge(page)))
        if health["assigned_partitions"] and "starting" not in health["directions"].values():
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{url} did not finish starting: last answer {seen[-1:]}")


def test_two_workers_share_partitions_and_survive_losing_one(system, api):
    # The first worker alone reads a few partitions first, so that the rebalance takes some away.
    early = [request_approval(api, create_deal_with_document(api, name=f"Early {i}")) for i in range(8)]
    for flow in early:
        wait_crm_status(api, flow, "in_progress", "legal", timeout=90)
    read_alone = lag_partitions(system.bridge_url)
    second = system.start_replica("bridge", "bridge-2", free_port())
    # Until it has read the control topic a worker holds both directions, and says so as
    # "starting": not as an operator's pause, and with no pause gauge series (a 1 would
    # silence FlowStalled for a worker stuck there).
    answers = watch_start(second)
    assert not any(any(paused.values()) for _, paused, _ in answers), answers
    assert all(gauge == {} for directions, _, gauge in answers if "starting" in directions.values()), answers
    assert answers[-1][0] == {"crm-to-ecm": "open", "ecm-to-crm": "open"}
    assert any("starting" in directions.values() for directions, _, _ in answers), \
        "the worker was never seen starting (it reads the control topic after its first assignment)"
    assert pause_gauge(httpx.get(f"{second}/metrics", timeout=5).text) == {"crm-to-ecm": 0, "ecm-to-crm": 0}
    # After the rebalance each worker holds part of the partitions, and together all of them.
    wait_until(lambda: assigned(system.bridge_url) and assigned(second)
               and not assigned(system.bridge_url) & assigned(second)
               and len(assigned(system.bridge_url) | assigned(second)) == 12,
               timeout=90, interval=1, message="partitions split between two workers")
    assert read_alone & assigned(second), "the rebalance moved none of the partitions read so far"
    # No worker reports the lag of a partition it no longer holds (ConsumerFallingBehind,
    # deploy/prometheus/alerts.yml, sums the workers' figures).
    for url in (system.bridge_url, second):
        assert lag_partitions(url) <= assigned(url), url

    flows = [create_deal_with_document(api, name=f"Scale {i}") for i in range(16)]
    for i, flow in enumerate(flows):
        request_approval(api, flow)
        if i == 6:
            system.kill("bridge-2", signal.SIGKILL)
    wait_until(lambda: len(assigned(system.bridge_url)) == 12, timeout=90, interval=1,
               message="the surviving worker took over every partition")
    for flow in flows:
        wait_crm_status(api, flow, "in_progress", "legal", timeout=90)
    wait_drained(system)
    assert ecm_counts(api, flows) == [(1, 1, 1, 1)] * len(flows)
