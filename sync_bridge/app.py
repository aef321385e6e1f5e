"""The faust App and its settings. At-least-once: offsets are committed after the
agent has handled a message; every downstream consumer dedupes by command id."""

from __future__ import annotations

import faust

from schemas.topics import CRM_EVENTS, ECM_EVENTS
from sync_bridge.config import BridgeSettings

settings = BridgeSettings()

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap_servers.split(",")],
    value_serializer="raw",
    key_serializer="raw",
    # Measured against the local broker: group joins take ~30 s with faust's defaults
    # and ~5 s with these.
    broker_session_timeout=10,
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

crm_events_topic = app.topic(CRM_EVENTS, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)
ecm_events_topic = app.topic(ECM_EVENTS, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)
