import asyncio
from types import SimpleNamespace

from sync_bridge import handling


async def test_an_event_whose_dead_letter_cannot_be_written_is_retried_in_place(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    calls = []

    async def handle(events):
        calls.append(events)
        if len(calls) < 3:
            raise ConnectionError("broker away while dead-lettering")

    events = [SimpleNamespace(message=SimpleNamespace(topic="crm.events", partition=0, offset=7))]
    await handling.handle_until_done(handle, events)
    assert calls == [events] * 3


async def _no_wait(_seconds):
    return None


async def test_the_bridge_consumer_waits_at_the_broker_no_longer_than_configured():
    # faust fixes 1,500 ms; the local broker waits all of it whenever a fetch finds nothing.
    from sync_bridge.app import app, settings

    thread = app.consumer._new_consumer_thread()
    consumer = thread._create_worker_consumer(app.transport)
    assert settings.fetch_max_wait_ms == 50
    assert consumer._fetch_max_wait_ms == 50  # what aiokafka hands its fetcher when it starts


async def test_a_worker_taken_out_of_its_group_for_waiting_looks_active_once_its_agent_is_done(monkeypatch):
    # aiokafka rejoins only a consumer that has fetched within the poll interval; faust
    # fetches only once it is assigned partitions again. The revoke ends the wait.
    import time

    from faust.transport.drivers import aiokafka as faust_aiokafka

    from sync_bridge.app import app, settings

    thread = app.consumer._new_consumer_thread()
    thread._consumer = thread._create_worker_consumer(app.transport)
    subscription = thread._consumer._subscription
    subscription._last_fetch_ended = time.monotonic() - 2 * settings.max_poll_interval
    assert subscription.fetcher_idle_time >= settings.max_poll_interval  # aiokafka would not rejoin
    agent_done = []

    async def faust_revoke(_thread, revoked):  # faust waits here for the agent's events
        agent_done.append(revoked)

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_partitions_revoked", faust_revoke)
    await thread.on_partitions_revoked({"crm.events-0"})
    assert agent_done == [{"crm.events-0"}]
    assert subscription.fetcher_idle_time < 1


def test_the_bridge_consumer_keeps_its_session_as_configured():
    # faust's own default is 60 s, and the local broker holds a joining consumer for half
    # of it. The app reads its settings when imported: a process of its own.
    import os
    import subprocess
    import sys

    code = ("import asyncio\n"
            "from sync_bridge.app import app\n"
            "async def made():\n"
            "    return app.consumer._new_consumer_thread()._create_worker_consumer(app.transport)\n"
            "print(asyncio.run(made())._session_timeout_ms)\n")
    env = {**os.environ, "KAFKA_SESSION_TIMEOUT_MS": "6000"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "6000"


def _document(doc_id: str, size: int):
    from schemas.crm_events import DocumentRef

    return DocumentRef(id=doc_id, filename=f"{doc_id}.pdf", content_type="application/pdf", doc_type="contract",
                       sha256="a" * 64, size=size)


def test_small_documents_are_planned_into_bounded_batches_and_large_ones_go_alone():
    from sync_bridge.transfer import BatchLimits, plan_batches

    docs = [_document("a", 10), _document("big", 101), _document("b", 60), _document("a", 10), _document("c", 50),
            _document("d", 1), _document("e", 1)]
    batches, alone = plan_batches(docs, BatchLimits(document_bytes=100, batch_bytes=120, documents=2))
    assert [[d.id for d in batch] for batch in batches] == [["a", "b"], ["c", "d"], ["e"]]
    assert [d.id for d in alone] == ["big"]


def _requested(request_id: str, document):
    from datetime import datetime, timezone

    from schemas import crm_events
    from schemas.envelope import new_envelope
    from schemas.registry import encode, parse_message

    payload = crm_events.ApprovalRequestedV2(
        approval_request_id=request_id, requested_at=datetime.now(timezone.utc), requested_by="user-1",
        organization=crm_events.OrganizationSnapshotV2(id="org-1", name="Вектор"),
        deal=crm_events.DealRef(id="deal-1", title="Supply"), document=document)
    return parse_message(encode(new_envelope(type=crm_events.APPROVAL_REQUESTED, schema_version=2, source="crm",
                                             payload=payload, correlation_id=f"corr-{request_id}")))


def _merged():
    from datetime import datetime, timezone

    from schemas import crm_events
    from schemas.envelope import new_envelope
    from schemas.registry import encode, parse_message

    payload = crm_events.OrganizationsMergedV1(merged_id="loser", survivor_id="org-1", merged_by="u",
                                               merged_at=datetime.now(timezone.utc))
    return parse_message(encode(new_envelope(type=crm_events.ORGANIZATIONS_MERGED, schema_version=1, source="crm",
                                             payload=payload, correlation_id="corr-merge")))


class _FakeTransfer:
    """Copies in batches, except the documents it is told to leave out (as when the bytes
    the CRM sent are not the event's); records every call."""

    def __init__(self, leave_out=()):
        self.leave_out, self.batches, self.single = set(leave_out), [], []

    @staticmethod
    def _stored(document):
        from sync_bridge.translation import StoredDocument

        return StoredDocument(document_id=f"ecm-{document.id}", version_id=f"v-{document.id}", sha256=document.sha256)

    async def copy_batch(self, documents, *, correlation_id):
        self.batches.append(([d.id for d in documents], correlation_id))
        return {d.id: self._stored(d) for d in documents if d.id not in self.leave_out}

    async def copy(self, document, *, correlation_id):
        self.single.append((document.id, correlation_id))
        return self._stored(document)


async def test_a_batch_copies_small_documents_together_and_sends_every_command_in_event_order(monkeypatch):
    from schemas import ecm_commands

    fake, sent = _FakeTransfer(leave_out={"doc-2"}), []

    async def publish(commands):
        sent.append(commands)

    monkeypatch.setattr(handling, "_transfer", fake)
    monkeypatch.setattr(handling, "publish", publish)
    messages = [_requested("r1", _document("doc-1", 10)), _merged(),
                _requested("r2", _document("doc-2", 10)), _requested("r3", _document("doc-3", 10 ** 8))]
    await handling.when_crm_events_update_ecm(messages, "crm.events")

    assert [ids for ids, _ in fake.batches] == [["doc-1", "doc-2"]]
    assert fake.batches[0][1].startswith("batch-")  # a batch call has its own correlation id
    assert fake.single == [("doc-3", "corr-r3"), ("doc-2", "corr-r2")]  # too large; left out by the batch
    (commands,) = sent  # one send for the whole batch
    assert [c.envelope.type for c in commands] == [
        ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL, ecm_commands.MERGE_EXTERNAL_REFS,
        ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL,
        ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL]
    starts = [c.envelope.payload for c in commands if c.envelope.type == ecm_commands.START_APPROVAL]
    assert [s["document_id"] for s in starts] == ["ecm-doc-1", "ecm-doc-2", "ecm-doc-3"]


def test_the_bridge_worker_keeps_library_debug_logs_off():
    """faust's terminal spinner would set the root logger to DEBUG: every aiokafka and
    httpcore debug call would then build a record (a tenth of the bridge's CPU)."""
    import logging

    from sync_bridge.__main__ import make_worker

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        make_worker()._setup_logging()
        assert not logging.getLogger("aiokafka").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("httpcore").isEnabledFor(logging.INFO)
        assert logging.getLogger("sync_bridge").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_the_libraries_records_are_json_lines_of_the_service_after_faust_sets_up_logging(capsys):
    """faust sets up logging again as its worker starts, with its own plain-text format:
    aiokafka's and faust's warnings (a failed commit, a rebalance) were the only lines of
    the bridge's log a JSON log shipper could not read."""
    import json
    import logging

    import structlog

    from infra.logs import bound_contextvars, configure_logging
    from sync_bridge.__main__ import make_worker

    root = logging.getLogger()
    saved = (root.level, list(root.handlers), structlog.get_config())
    try:
        make_worker(configure_logging("bridge", json_logs=True))._setup_logging()
        with bound_contextvars(correlation_id="c-7"):
            logging.getLogger("aiokafka.consumer.group_coordinator").error(
                "OffsetCommit failed for group %s, will rejoin", "sync-bridge")
        logging.getLogger("faust").info("below the worker's level")
        (line,) = capsys.readouterr().out.splitlines()
        assert json.loads(line) == {
            "event": "OffsetCommit failed for group sync-bridge, will rejoin", "service": "bridge",
            "level": "error", "logger": "aiokafka.consumer.group_coordinator", "correlation_id": "c-7",
            "timestamp": json.loads(line)["timestamp"]}
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        structlog.configure(**saved[2])


async def test_httpcore_finds_sniffio_so_its_per_call_import_is_a_lookup():
    """httpcore imports sniffio each time it sets up a lock or an event (several times per
    HTTP call of the bridge's transfers); without sniffio installed each of those imports
    fails after searching sys.path: 38.7 instead of 1.2 us per call here, ~4 % of the bridge's
    CPU under load (encode/httpcore#1103). sniffio is pinned for that reason."""
    import sys

    from httpcore._synchronization import current_async_library

    assert current_async_library() == "asyncio"
    assert "sniffio" in sys.modules


async def test_a_starting_worker_holds_both_directions_without_reporting_a_pause():
    from sync_bridge.control import CRM_TO_ECM, ECM_TO_CRM, DirectionGates

    gates = DirectionGates()
    held = asyncio.ensure_future(gates.wait_open(CRM_TO_ECM))
    await asyncio.sleep(0)
    assert not held.done()  # nothing passes before the operators' decisions are known
    assert [gates.describe(d) for d in (CRM_TO_ECM, ECM_TO_CRM)] == ["starting", "starting"]
    assert not gates.is_paused(CRM_TO_ECM)

    gates.catch_up({ECM_TO_CRM: {"paused": True, "reason": "ECM maintenance"}})
    await asyncio.sleep(0)
    assert held.done()
    assert [gates.describe(d) for d in (CRM_TO_ECM, ECM_TO_CRM)] == ["open", "paused"]
    assert gates.is_paused(ECM_TO_CRM)

    gates.apply({ECM_TO_CRM: {"paused": False}})
    assert gates.describe(ECM_TO_CRM) == "open"


def test_the_pause_gauge_has_no_series_while_a_worker_starts():
    from prometheus_client import generate_latest

    from sync_bridge.control import ECM_TO_CRM, DirectionGates
    from sync_bridge.web import export_pauses
    from tests.support.metrics import samples

    def exported():
        return {s.labels["direction"]: s.value for s in samples(generate_latest().decode(), "bridge_direction_paused")}

    gates = DirectionGates()
    export_pauses(gates)
    assert exported() == {}
    gates.catch_up({ECM_TO_CRM: {"paused": True}})
    export_pauses(gates)
    assert exported() == {"crm-to-ecm": 0, "ecm-to-crm": 1}
    export_pauses(DirectionGates())  # read again from the start after a restart of the app
    assert exported() == {}


def _version_added(request_id: str, document):
    from datetime import datetime, timezone

    from schemas import crm_events
    from schemas.envelope import new_envelope
    from schemas.registry import encode, parse_message

    payload = crm_events.DocumentVersionAddedV1(
        approval_request_id=request_id, organization_id="org-1", deal=crm_events.DealRef(id="deal-1", title="Supply"),
        document=document, version_no=2, added_by="user-1", added_at=datetime.now(timezone.utc))
    return parse_message(encode(new_envelope(type=crm_events.DOCUMENT_VERSION_ADDED, schema_version=1, source="crm",
                                             payload=payload, correlation_id=f"corr-v-{request_id}")))


async def test_a_new_version_is_copied_after_its_request_and_sends_no_command(monkeypatch):
    from schemas import ecm_commands

    fake, sent = _FakeTransfer(), []

    async def publish(commands):
        sent.append(commands)

    monkeypatch.setattr(handling, "_transfer", fake)
    monkeypatch.setattr(handling, "publish", publish)
    corrected = _document("doc-1", 12).model_copy(update={"sha256": "b" * 64, "filename": "fixed.pdf"})
    await handling.when_crm_events_update_ecm(
        [_requested("r1", _document("doc-1", 10)), _version_added("r1", corrected)], "crm.events")
    assert [ids for ids, _ in fake.batches] == [["doc-1"]]  # the request's file first, then the new one
    assert fake.single == [("doc-1", "corr-v-r1")]
    (commands,) = sent
    assert [c.envelope.type for c in commands] == [ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL]
    assert commands[1].envelope.payload["sha256"] == "a" * 64  # the ECM moves the approval to the newer one

    sent.clear()
    await handling.when_crm_event_update_ecm(_version_added("r1", corrected), "crm.events")
    assert fake.single[-1] == ("doc-1", "corr-v-r1") and sent == []
    assert handling.crm_events.DOCUMENT_VERSION_ADDED in handling.CRM_TO_ECM.accepted_types
