"""At-least-once everywhere, idempotent everywhere: replays, crashes and poison
messages lose nothing and duplicate nothing. Real processes on PostgreSQL."""

import asyncio
import json
import signal
import uuid
from datetime import datetime, timezone

import httpx
import pytest

from infra.dead_letters import KEPT_WHEN_TOO_LARGE, error_context
from infra.topic_inspection import committed_offsets, end_offsets
from schemas import crm_commands, crm_events, ecm_commands, ecm_events
from schemas.registry import MAX_MESSAGE_BYTES
from schemas.topics import CRM_COMMANDS, CRM_EVENTS, DATA_TOPICS, ECM_COMMANDS, ECM_EVENTS, dead_letter_topic
from sync_bridge.bridgectl import CONSUMER_GROUPS
from tests.e2e.conftest import running_system
from tests.e2e.journey import (
    SALES,
    approve_all,
    create_deal_with_document,
    decide,
    ecm_approval,
    request_approval,
    wait_crm_status,
)
from tests.support import alerts
from tests.support.kafka import produce, read_all, republish
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql")



def run(coro):
    return asyncio.run(coro)


async def _lag(bootstrap: str) -> int:
    """Messages not yet committed by the group that consumes each data topic."""
    lag = 0
    for topic, group in CONSUMER_GROUPS.items():
        ends = await end_offsets(bootstrap, [topic])
        committed = await committed_offsets(bootstrap, group, list(ends))
        lag += sum(max(0, end - (committed.get(tp) or 0)) for tp, end in ends.items())
    return lag


def wait_drained(system, timeout=90):
    wait_until(lambda: run(_lag(system.bootstrap_servers)) == 0, timeout=timeout, interval=1,
               message="every consumer group caught up")


def ecm_counts(api, flows):
    counts = []
    for flow in flows:
        approvals = api.ecm("legal-lena", "GET", f"/api/approvals?external_ref=crm:{flow['request']['id']}").json()
        docs = api.ecm("legal-lena", "GET", f"/api/documents?external_ref=crm:{flow['document']['id']}").json()
        parties = api.ecm("steward-stas", "GET", f"/api/counterparties?external_ref=crm:{flow['org']['id']}").json()
        counts.append((len(approvals), len(docs), sum(len(d["versions"]) for d in docs), len(parties)))
    return counts


# A message type each topic's consumer reads, to build the foreign and malformed kinds from.
TOPIC_TYPES = {CRM_EVENTS: crm_events.APPROVAL_REQUESTED, ECM_COMMANDS: ecm_commands.SYNC_COUNTERPARTY,
               ECM_EVENTS: ecm_events.COUNTERPARTY_SYNCED, CRM_COMMANDS: crm_commands.UPDATE_ORGANIZATION_LINK}


def _envelope(type_: str, payload: dict, version: int = 1, **extra) -> bytes:
    body = {"event_id": str(uuid.uuid4()), "type": type_, "schema_version": version, "source": "chaos",
            "occurred_at": datetime.now(timezone.utc).isoformat(), "correlation_id": "poison", "payload": payload,
            **extra}
    return json.dumps(body).encode()


def poison_kinds(topic: str) -> dict[str, tuple[bytes, str]]:
    """Every kind of bad message, with the words its dead letter's reason must carry."""
    type_ = TOPIC_TYPES[topic]
    return {
        "invalid_json": (f"not json for {topic}".encode(), "not a valid envelope"),
        "unknown_type": (_envelope("crm.something_new", {}), "unknown message type"),
        "unknown_version": (_envelope(type_, {}, version=99), "newer than supported"),
        "missing_fields": (_envelope(type_, {}), f"invalid {type_} payload"),
        "oversize": (_envelope(type_, {"padding": "x" * (MAX_MESSAGE_BYTES + 10)}), "exceeds"),
    }


def test_every_kind_of_bad_message_on_each_consumed_topic_is_dead_lettered_and_the_next_is_processed(api, system):
    bootstrap = system.bootstrap_servers
    flow = create_deal_with_document(api, name="After the poison")
    poison = {(topic, kind): bad for topic in DATA_TOPICS for kind, bad in poison_kinds(topic).items()}
    for (topic, _), (value, _) in poison.items():
        # Same key as the valid flow: the poison sits on the very partition the flow needs.
        run(produce(bootstrap, topic, value, key=flow["org"]["id"].encode()))
    request_approval(api, flow)
    approval = ecm_approval(api, flow)
    decide(api, approval["id"], "legal")
    wait_crm_status(api, flow, "in_progress", "finance")

    for (topic, kind), (value, reason) in poison.items():
        kept = value[:KEPT_WHEN_TOO_LARGE] if kind == "oversize" else value
        letters = wait_until(lambda t=topic, v=kept: [r for r in run(read_all(bootstrap, dead_letter_topic(t)))
                                                      if r.value == v],
                             timeout=60, message=f"dead letter {kind} from {topic}")
        ctx = error_context(letters[0].headers)
        if kind == "oversize":  # kept in part, with what proves the whole
            assert ctx["value.bytes"] == str(len(value)) and ctx["value.truncated"] == "true"
        assert ctx["source.topic"] == topic and ctx["error.class"] == "InvalidMessage", (topic, kind)
        assert reason in ctx["error.message"] and int(ctx["source.offset"]) >= 0, (topic, kind, ctx)
        assert letters[0].key == flow["org"]["id"].encode()
    # The DeadLetters alert (deploy/prometheus/alerts.yml) selects what each consumer counted.
    counted = [sample for base in (system.crm_url, system.ecm_url, system.bridge_url)
               for sample in alerts.selected("DeadLetters", httpx.get(f"{base}/metrics", timeout=10).text)
               if sample.value > 0]
    assert {sample.labels["topic"] for sample in counted} == set(DATA_TOPICS)
    for process in system.processes.values():
        assert process.poll() is None, "nothing crashed"


def test_replaying_every_topic_from_offset_zero_creates_no_duplicates(api, system):
    flows = [request_approval(api, create_deal_with_document(api, name=f"Replay {i}")) for i in range(3)]
    approvals = [ecm_approval(api, f) for f in flows]
    for approval in approvals[:2]:
        approve_all(api, approval["id"])
    wait_crm_status(api, flows[0], "approved", None)
    wait_crm_status(api, flows[1], "approved", None)
    wait_crm_status(api, flows[2], "in_progress", "legal")
    wait_drained(system)
    before = ecm_counts(api, flows)
    assert before == [(1, 1, 1, 1)] * 3

    records = [r for topic in DATA_TOPICS for r in run(read_all(system.bootstrap_servers, topic))]
    assert run(republish(system.bootstrap_servers, records)) == len(records) > 0
    wait_drained(system)

    assert ecm_counts(api, flows) == before
    # Old "in_progress" updates replayed after "approved" do not move the CRM backwards.
    for flow, status, stage in zip(flows, ("approved", "approved", "in_progress"), (None, None, "legal"), strict=True):
        approval = api.crm(SALES, "GET", f"/api/deals/{flow['deal']['id']}").json()["approval"]
        assert (approval["status"], approval["stage"]) == (status, stage)


def test_killing_the_bridge_mid_flow_loses_and_duplicates_nothing(api, system):
    flows = [create_deal_with_document(api, name=f"Crash {i}") for i in range(12)]
    for i, flow in enumerate(flows):
        request_approval(api, flow)
        if i == 4:
            system.kill("bridge", signal.SIGKILL)
    system.start_process("bridge")
    system.wait_healthy(names=("bridge",))
    for flow in flows:
        wait_crm_status(api, flow, "in_progress", "legal", timeout=90)
    wait_drained(system)
    assert ecm_counts(api, flows) == [(1, 1, 1, 1)] * len(flows)
