import asyncio
import json

import httpx
import pytest
from prometheus_client import REGISTRY

from infra.dead_letters import error_context
from infra.delivery import DeliveryPolicy, Record, apply_together, deliver
from infra.outages import ServiceUnavailable, retry_after_seconds
from infra.retrying import PermanentError
from tests.unit.test_message_parsing import envelope

POLICY = DeliveryPolicy(consumer="test", accepted_types=frozenset({"crm.update_approval_status"}), max_attempts=3,
                        max_wait=0.01)


def record(value):
    return Record("crm.commands", 2, 41, b"key", value, [("correlation_id", b"c-1")])


class Letters(list):
    async def __call__(self, letter):
        self.append(letter)


async def test_transient_failures_are_retried_then_applied():
    calls, letters = [], Letters()

    async def flaky(message, topic):
        calls.append(topic)
        if len(calls) < 3:
            raise ConnectionError("db away")

    assert await deliver(record(envelope()), POLICY, flaky, letters) is True
    assert len(calls) == 3 and letters == []


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_exhausted_retries_dead_letter_with_context():
    letters = Letters()
    failures = dict(consumer="test", topic="crm.commands", type="crm.update_approval_status",
                    error_class="RuntimeError")
    before = sample("bridge_delivery_failures_total", **failures)
    dead_before = sample("bridge_messages_consumed_total", consumer="test", topic="crm.commands",
                         type="crm.update_approval_status", outcome="dead_lettered")

    async def failing(message, topic):  # the handler's own failure, not an outage
        raise RuntimeError("a bug this message runs into")

    assert await deliver(record(envelope()), POLICY, failing, letters) is False
    assert sample("bridge_delivery_failures_total", **failures) - before == 3  # one per attempt
    assert sample("bridge_messages_consumed_total", consumer="test", topic="crm.commands",
                  type="crm.update_approval_status", outcome="dead_lettered") - dead_before == 1
    (letter,) = letters
    ctx = error_context(letter.headers)
    assert letter.topic == "crm.commands.dlq" and letter.key == b"key" and letter.value == envelope()
    assert ctx["source.topic"] == "crm.commands" and ctx["source.partition"] == "2" and ctx["source.offset"] == "41"
    assert ctx["error.class"] == "RuntimeError" and ctx["attempts"] == "3" and ctx["consumer"] == "test"
    assert ("correlation_id", b"c-1") in letter.headers


@pytest.mark.parametrize("outage", [
    ConnectionRefusedError("the database is restarting"),
    ServiceUnavailable("ECM upload: HTTP 503", status=503, retry_after=0.001),
    ServiceUnavailable("ECM upload: HTTP 507", status=507),
    httpx.ConnectError("the ECM is not listening"),
])
async def test_an_outage_is_waited_out_past_the_attempts_and_never_dead_lettered(outage):
    """A database restart of more than ~3 s dead-lettered the services' commands (5
    attempts), an ECM away for more than ~70 s the bridge's events (12): good messages
    left for someone to replay. An outage is now waited out however long it lasts, and the
    message applied when it ends; each failed attempt is still counted."""
    calls, letters = [], Letters()
    failures = dict(consumer="test", topic="crm.commands", type="crm.update_approval_status",
                    error_class=type(outage).__name__)
    before = sample("bridge_delivery_failures_total", **failures)

    async def away_for_a_while(message, topic):
        calls.append(1)
        if len(calls) <= 4 * POLICY.max_attempts:
            raise outage

    assert await deliver(record(envelope()), POLICY, away_for_a_while, letters) is True
    assert len(calls) == 4 * POLICY.max_attempts + 1 and letters == []
    assert sample("bridge_delivery_failures_total", **failures) - before == 4 * POLICY.max_attempts


async def test_a_message_that_brings_its_service_down_is_dead_lettered_not_waited_for():
    """A request the ECM dies of ends in a dropped connection, then the ECM refuses
    connections while it restarts. The refusals are an outage and are waited out, but the
    dropped connection is the message's own failure: once the attempts are used, the next
    one dead-letters it, and the partition goes on instead of bringing the ECM down again."""
    calls, letters = [], Letters()

    async def kills_the_ecm(message, topic):
        calls.append(1)
        if len(calls) % 4 == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        raise httpx.ConnectError("the ECM is restarting")

    assert await deliver(record(envelope()), POLICY, kills_the_ecm, letters) is False
    assert len(calls) == 5  # died, 3 refusals while it restarted, died again
    assert error_context(letters[0].headers)["error.class"] == "RemoteProtocolError"


@pytest.mark.parametrize("attempts_before", [0, 2])  # the stop lands on the first attempt, or on the last
async def test_a_delivery_cancelled_as_its_worker_stops_ends_there_and_dead_letters_nothing(attempts_before):
    """A stopping bridge cancels an agent still waiting out an outage (ADR 0020, after
    BRIDGE_STOP_WAIT_SECONDS). tenacity keeps whatever an attempt raises, a cancellation
    included, and asked `is_transient` whether to retry it (jd/tenacity#529): a cancel
    that landed during a call, not during the wait between calls, was retried, or
    dead-lettered once the attempts were used (`CancelledError`), and the agent went on
    to its next message instead of stopping (seen when the suite ran two files at once).
    The cancellation now ends the delivery: no dead letter, no further attempt."""
    calls, letters, in_call = [], Letters(), asyncio.Event()

    async def ecm_away(message, topic):
        calls.append(1)
        if len(calls) <= attempts_before:
            raise httpx.ConnectError("the ECM is not listening")
        in_call.set()
        await asyncio.sleep(30)  # the connection attempt in flight as the stop comes

    delivery = asyncio.ensure_future(deliver(record(envelope()), POLICY, ecm_away, letters))
    await asyncio.wait_for(in_call.wait(), 5)
    delivery.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(delivery, 5)
    assert letters == [] and len(calls) == attempts_before + 1


def test_the_wait_after_a_failure_is_what_the_answer_asked_for_within_a_ceiling():
    from tenacity import Future, RetryCallState

    from infra.retrying import RETRY_AFTER_CEILING, backoff

    def after(failure, attempt=1):
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.outcome = Future.construct(attempt, failure, True)
        return backoff(max_wait=10.0)(state)

    assert after(ConnectionRefusedError()) == 0.2 and after(ConnectionRefusedError(), attempt=9) == 10.0
    assert after(ServiceUnavailable("HTTP 503", status=503, retry_after=5)) == 5.0
    assert after(ServiceUnavailable("HTTP 503", status=503, retry_after=1), attempt=9) == 10.0  # backoff longer
    assert after(ServiceUnavailable("HTTP 429", status=429, retry_after=86400)) == RETRY_AFTER_CEILING


def test_retry_after_is_read_as_seconds_or_a_date():
    from datetime import datetime, timezone

    now = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("5") == 5.0 and retry_after_seconds(" 120 ") == 120.0
    assert retry_after_seconds("Mon, 07 Dec 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Mon, 07 Dec 2026 11:00:00 GMT", now=now) == 0.0  # already past
    assert [retry_after_seconds(v) for v in (None, "", "soon", "-5", "1.5")] == [None] * 5


@pytest.mark.parametrize("value, error_class", [(b"garbage", "InvalidMessage"), (envelope(), "PermanentError")])
async def test_permanent_failures_are_not_retried(value, error_class):
    calls, letters = [], Letters()

    async def refuse(message, topic):
        calls.append(1)
        raise PermanentError("HTTP 404")

    assert await deliver(record(value), POLICY, refuse, letters) is False
    assert len(calls) == (1 if error_class == "PermanentError" else 0)
    assert error_context(letters[0].headers)["error.class"] == error_class
    assert error_context(letters[0].headers)["attempts"] == "1"


def test_dead_letter_of_a_dead_letter_keeps_one_error_context():
    from infra.dead_letters import build_dead_letter

    first = build_dead_letter(source_topic="t", partition=0, offset=1, key=None, value=b"v", headers=[],
                              error=ValueError("a"), attempts=1, consumer="c")
    second = build_dead_letter(source_topic="t", partition=0, offset=9, key=None, value=b"v", headers=first.headers,
                               error=ValueError("b"), attempts=2, consumer="c")
    assert error_context(second.headers)["source.offset"] == "9"
    assert sum(1 for k, _ in second.headers if k == "dlq.error.message") == 1
    assert json.dumps(error_context(second.headers))


def test_a_value_too_large_to_dead_letter_is_kept_in_part_with_its_size_and_hash_and_not_replayed():
    import asyncio
    import hashlib

    import pytest

    from infra.dead_letters import KEPT_WHEN_TOO_LARGE, MAX_DEAD_LETTER_VALUE, build_dead_letter
    from sync_bridge.dead_letters import Letter, NotReplayable, replay

    big = b"x" * (MAX_DEAD_LETTER_VALUE + 1)
    letter = build_dead_letter(source_topic="t", partition=0, offset=1, key=b"k", value=big, headers=[],
                               error=ValueError("too big"), attempts=1, consumer="c")
    ctx = error_context(letter.headers)
    assert len(letter.value) == KEPT_WHEN_TOO_LARGE and letter.value == big[:KEPT_WHEN_TOO_LARGE]
    assert ctx["value.bytes"] == str(len(big)) and ctx["value.sha256"] == hashlib.sha256(big).hexdigest()
    small = build_dead_letter(source_topic="t", partition=0, offset=2, key=b"k", value=b"v", headers=[],
                              error=ValueError("bad"), attempts=1, consumer="c")
    assert small.value == b"v" and "value.truncated" not in error_context(small.headers)
    with pytest.raises(NotReplayable, match="t.dlq:0:1"):  # refused before any broker is contacted
        asyncio.run(replay("127.0.0.1:1", [Letter("t.dlq:0:1", letter.key, letter.value, letter.headers)]))


def _loop(batch_handler, batch_size=20):
    from infra.consumer_loop import ConsumerLoop

    async def single(message, topic):
        raise AssertionError("the single-message path is the consumer's, not apply_together's")

    return ConsumerLoop(bootstrap_servers="unused:9092", topic="crm.commands", group_id="g",
                        accepted_types=POLICY.accepted_types, handler=single, producer=None,
                        batch_handler=batch_handler, batch_size=batch_size)


def consumed(offset, value):
    return Record(topic="crm.commands", partition=0, offset=offset, key=b"k", value=value, headers=[])


async def test_a_batch_is_applied_together_and_garbage_is_left_for_dead_lettering():
    seen = []

    async def together(messages, topic):
        seen.append([str(m.envelope.event_id) for m in messages])

    ids = [f"8f0b8f5e-8e8e-4c1e-9a55-5d0c7c3b1a0{i}" for i in range(3)]
    group = [consumed(0, envelope(event_id=ids[0])), consumed(1, b"{garbage"), consumed(2, envelope(event_id=ids[1])),
             consumed(3, envelope(event_id=ids[2]))]
    left = await apply_together(group, POLICY, together)
    assert seen == [ids] and [r.offset for r in left] == [1]


async def test_a_failed_batch_leaves_every_record_to_the_single_path():
    async def failing(messages, topic):
        raise PermanentError("one of them is bad")

    group = [consumed(0, envelope()), consumed(1, envelope(event_id="8f0b8f5e-8e8e-4c1e-9a55-5d0c7c3b1a09"))]
    assert await apply_together(group, POLICY, failing) == group


async def test_records_are_grouped_by_batch_size_in_order():
    groups, singles = [], []

    async def together(messages, topic):
        groups.append(len(messages))

    loop = _loop(together, batch_size=2)

    async def single(record):
        singles.append(record.offset)

    loop.handle_record = single
    ids = [f"8f0b8f5e-8e8e-4c1e-9a55-5d0c7c3b1a1{i}" for i in range(5)]
    await loop.handle_records([consumed(i, envelope(event_id=ids[i])) for i in range(5)])
    assert groups == [2, 2] and singles == [4]  # the last one alone goes the single path


async def test_the_services_consumer_waits_at_the_broker_as_configured(monkeypatch):
    from crm_service.config import CrmSettings
    from infra.consumer_loop import ConsumerLoop

    monkeypatch.setenv("KAFKA_FETCH_MAX_WAIT_MS", "120")
    settings = CrmSettings()
    loop = ConsumerLoop(bootstrap_servers="unused:9092", topic="crm.commands", group_id="g",
                        accepted_types=POLICY.accepted_types, handler=None, producer=None,
                        fetch_max_wait_ms=settings.fetch_max_wait_ms)
    assert loop._make_consumer()._fetch_max_wait_ms == 120


async def test_the_services_consumer_keeps_its_session_as_configured(monkeypatch, tmp_path):
    # The local broker holds a joining consumer for half the session timeout, and Kafka
    # takes a killed consumer's partitions away after it: both come from the setting.
    from crm_service.bootstrap import bootstrap
    from crm_service.config import CrmSettings

    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", "6000")
    container = bootstrap(CrmSettings(database_url="sqlite+aiosqlite:///:memory:", files_dir=tmp_path))
    try:
        assert container.command_consumer()._make_consumer()._session_timeout_ms == 6000
    finally:
        await container.producer.stop()
        await container.engine.dispose()
    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", "500")
    with pytest.raises(ValueError, match="greater than or equal to 1000"):
        CrmSettings()


async def test_a_fetch_of_several_partitions_is_one_group_each_partition_in_order():
    """Under a steady load a fetch holds a few records per partition: they are applied as
    one group (one transaction), not one per partition, and offsets are committed once."""
    import asyncio

    from aiokafka.structs import ConsumerRecord, TopicPartition

    groups, commits = [], []

    async def together(messages, topic):
        groups.append([str(m.envelope.event_id) for m in messages])

    ids = [f"8f0b8f5e-8e8e-4c1e-9a55-5d0c7c3b1a2{i}" for i in range(5)]

    def consumer_record(partition, offset, event_id):
        return ConsumerRecord("crm.commands", partition, offset, 0, 0, b"k", envelope(event_id=event_id), None,
                              0, 0, [])

    fetched = {TopicPartition("crm.commands", 0): [consumer_record(0, 7, ids[0]), consumer_record(0, 8, ids[1])],
               TopicPartition("crm.commands", 1): [consumer_record(1, 3, ids[2])],
               TopicPartition("crm.commands", 2): [consumer_record(2, 5, ids[3]), consumer_record(2, 6, ids[4])]}

    class OneFetch:
        calls = 0

        async def start(self): ...

        async def stop(self): ...

        async def getmany(self, **_):
            OneFetch.calls += 1
            if OneFetch.calls > 1:
                raise asyncio.CancelledError
            return fetched

        async def commit(self):
            commits.append(True)

        def highwater(self, tp):
            return None

    loop = _loop(together, batch_size=100)
    loop._make_consumer = OneFetch
    with pytest.raises(asyncio.CancelledError):
        await loop.run_forever()
    assert groups == [ids] and commits == [True]


def test_a_consumer_counts_every_outcome_it_can_label_from_zero_before_its_first_message():
    # FlowStalled and the dashboard read rate() and increase() of these counts: a series
    # born at its first increment would show no increase for it.
    from infra.consumer_loop import ConsumerLoop
    from schemas.registry import TYPES_ON_TOPIC
    from sync_bridge import handling

    def counted(consumer, topic, type_, outcome):  # None: no such series
        return REGISTRY.get_sample_value("bridge_messages_consumed_total",
                                         dict(consumer=consumer, topic=topic, type=type_, outcome=outcome))

    types = frozenset({"crm.update_approval_status", "crm.update_organization_link"})
    assert counted("zero-test", "crm.commands", "crm.update_approval_status", "applied") is None
    ConsumerLoop(bootstrap_servers="127.0.0.1:1", topic="crm.commands", group_id="zero-test", accepted_types=types,
                 handler=None, producer=None)
    assert [counted("zero-test", "crm.commands", t, "applied") for t in sorted(types)] == [0.0, 0.0]
    assert [counted("zero-test", "crm.commands", t, "dead_lettered")
            for t in (*sorted(types), "invalid")] == [0.0, 0.0, 0.0]
    for policy, topic in ((handling.CRM_TO_ECM, "crm.events"), (handling.ECM_TO_CRM, "ecm.events")):
        assert policy.accepted_types == set(TYPES_ON_TOPIC[topic])  # every type its topic carries
        labels = [(t, outcome) for t in (*sorted(policy.accepted_types), "invalid")
                  for outcome in ("applied", "dead_lettered")]
        missing = [(t, outcome) for t, outcome in labels if counted(policy.consumer, topic, t, outcome) is None]
        assert missing == [("invalid", "applied")]  # an invalid message is never applied


def test_every_producer_counts_every_type_its_topic_carries_from_zero_before_its_first_message():
    # FlowStalled compares rate() of the published counts with the consumed ones: a published
    # series born at its first increment shows no rate, so a stalled consumer of a brand-new
    # type went unreported until a second message came.
    from crm_service.bootstrap import CrmContainer
    from ecm_service.bootstrap import EcmContainer
    from infra.metrics import MESSAGES_PUBLISHED
    from schemas.registry import TYPES_ON_TOPIC
    from sync_bridge import handling  # noqa: F401  (the bridge counts its two topics when it loads)

    def published(producer, topic):
        return {t: REGISTRY.get_sample_value("bridge_messages_published_total",
                                             dict(producer=producer, topic=topic, type=t))
                for t in TYPES_ON_TOPIC[topic]}

    for container, producer, topic in ((CrmContainer, "crm", "crm.events"), (EcmContainer, "ecm", "ecm.events")):
        for message_type in TYPES_ON_TOPIC[topic]:
            try:
                MESSAGES_PUBLISHED.remove(producer, topic, message_type)
            except KeyError:
                pass
        assert set(published(producer, topic).values()) == {None}
        container(settings=None, engine=None, session_factory=None, producer=None).relay()
        assert set(published(producer, topic).values()) == {0.0}, producer
    for topic in ("ecm.commands", "crm.commands"):
        assert None not in published("bridge", topic).values(), topic


async def test_a_message_of_a_type_the_consumer_does_not_accept_is_counted_as_invalid():
    letters = Letters()
    labels = dict(consumer="test", topic="crm.commands", type="invalid", outcome="dead_lettered")
    before = sample("bridge_messages_consumed_total", **labels)

    async def never(message, topic):
        raise AssertionError("not handled")

    foreign = json.dumps({**json.loads(envelope()), "type": "crm.something_new"}).encode()
    assert await deliver(record(foreign), POLICY, never, letters) is False
    assert sample("bridge_messages_consumed_total", **labels) - before == 1


def test_the_launcher_shortens_the_session_only_on_its_own_local_broker(tmp_path, monkeypatch):
    from deploy.local_run import LauncherSettings, LocalSystem

    monkeypatch.delenv("KAFKA_SESSION_TIMEOUT_MS", raising=False)
    system = LocalSystem(LauncherSettings(var_dir=tmp_path))
    assert "KAFKA_SESSION_TIMEOUT_MS" not in system.env()  # a cluster of the operator's: Kafka's own terms
    system.processes["broker"] = None
    assert system.env()["KAFKA_SESSION_TIMEOUT_MS"] == "6000"
    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", "8000")  # set by whoever runs it: kept
    assert system.env()["KAFKA_SESSION_TIMEOUT_MS"] == "8000"
