"""The faust App and its settings. At-least-once: offsets are committed after the
agent has handled a message; every downstream consumer dedupes by command id."""

from __future__ import annotations

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from schemas.topics import CRM_EVENTS, ECM_EVENTS
from sync_bridge.config import BridgeSettings

settings = BridgeSettings()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust creates its consumers with fetch_max_wait_ms=1500 and no setting for it
    (faust-streaming 0.15.3). On the local broker a fetch then waits its full 1.5 s
    whenever it finds nothing, which at low load made up most of an approval's ~1.4 s
    from request to `in_progress`. The consumer takes KAFKA_FETCH_MAX_WAIT_MS instead;
    aiokafka reads the value when the consumer starts (its `_fetch_max_wait_ms`, pinned
    aiokafka 0.14.0; tests/unit/test_bridge_agents.py checks the attribute is there)."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap_servers.split(",")],
    value_serializer="raw",
    key_serializer="raw",
    # faust's default session timeout is 60 s, and the local broker holds a joining
    # consumer for half of it (KAFKA_SESSION_TIMEOUT_MS in infra.settings).
    broker_session_timeout=settings.session_timeout_ms / 1000,
    broker_rebalance_timeout=10,
    broker_heartbeat_interval=1,
    broker_commit_interval=1.0,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    processing_guarantee="at_least_once",
    topic_disable_leader=True,
    topic_partitions=settings.topic_partitions,
    store="memory://",
    datadir=str(settings.data_dir),
    web_enabled=True,
    web_bind=settings.host,
    web_port=settings.web_port,
    web_host=settings.host,
)

# Before the first topic: declaring one creates the app's transport.
app.transport = _Transport(app.conf.broker_consumer, app)

crm_events_topic = app.topic(CRM_EVENTS, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)
ecm_events_topic = app.topic(ECM_EVENTS, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)
