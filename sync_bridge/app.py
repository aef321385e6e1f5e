"""The faust App and its settings. At-least-once: offsets are committed after the
agent has handled a message; every downstream consumer dedupes by command id."""

from __future__ import annotations

import asyncio
import time

import faust
import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka

from schemas.topics import CRM_EVENTS, ECM_EVENTS
from sync_bridge.config import BridgeSettings

settings = BridgeSettings()
log = structlog.get_logger()


class GroupMembership:
    """Where this worker stands in its consumer group, for `/health`: `joining` until its
    first assignment, `member` once assigned (no partitions is an assignment too, with
    more workers than partitions), `out_of_group` from the moment its consumer was taken
    out while its agent waited (see `on_partitions_revoked`), `rejoining` once the agent
    has handled what it held, until the next assignment. Before, `/health` read the same
    all along, and an operator saw a worker out of its group only in its log."""

    def __init__(self) -> None:
        self.state, self.since = "joining", time.time()

    def to(self, state: str) -> None:
        self.state, self.since = state, time.time()


membership = GroupMembership()


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

    async def on_partitions_revoked(self, revoked) -> None:
        """A worker whose agent waits out an outage (ADR 0020) or a pause stops fetching
        once its stream buffer is full; after `broker_max_poll_interval` aiokafka takes it
        out of the group, and faust's revoke waits for the agent. aiokafka then rejoins
        only after a fetch (it skips the rejoin while the consumer looks idle), and faust
        fetches only once it is assigned partitions again: the worker stayed out of the
        group for good, its partitions unread, with nothing logged after the failed commit
        (seen with a 6-s interval and a 40-s ECM outage; like faust issue #517). The
        revoke returns once the agent has handled what it held, so the worker is active
        again: it says so to aiokafka (the end of a fetch, aiokafka 0.14.0's
        `_last_fetch_ended`), which rejoins."""
        subscription = self._consumer._subscription if self._consumer is not None else None
        idle = subscription.fetcher_idle_time if subscription is not None else 0.0
        left = idle >= settings.max_poll_interval
        if left:
            membership.to("out_of_group")
            log.warning("worker_left_group_while_waiting", idle_seconds=round(idle, 1),
                        max_poll_interval=settings.max_poll_interval, partitions=len(revoked))
        try:
            await super().on_partitions_revoked(revoked)
        finally:
            if subscription is not None:
                subscription._last_fetch_ended = time.monotonic()
                if left:
                    membership.to("rejoining")
                    log.info("worker_rejoining_group")

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        await super().on_partitions_assigned(assigned, generation_id)
        if membership.state != "member":
            membership.to("member")


class _Consumer(faust_aiokafka.Consumer):
    # Set when a stopping worker gave up waiting for its agents: nothing is committed after.
    _left_events_unhandled = False

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_empty(self) -> None:
        """faust waits, as the worker stops, for its agents to finish the events they hold.
        An agent waiting out an outage (ADR 0020) held the stop for as long as the outage
        lasted: a SIGTERM then ended in the supervisor's SIGKILL (the launcher's after
        10 s, Kubernetes' after the grace period). While stopping, the wait is bounded
        by `stop_wait_seconds`. On a rebalance (the worker goes on) faust still waits in
        full: the revoke's end is the agent's."""
        if not self.app.should_stop:
            return await super().wait_empty()
        waiting = asyncio.ensure_future(super().wait_empty())
        done, _ = await asyncio.wait({waiting}, timeout=settings.stop_wait_seconds)
        if not done:
            log.warning("stopping_with_events_unhandled", events=len(self._unacked_messages),
                        waited_seconds=settings.stop_wait_seconds)
            # The agents are cancelled next, and faust's take_events acknowledges a batch
            # however its loop body ends, a cancellation included: a commit after this
            # would mark events done that were not. Nothing more is committed; what this
            # worker handled since its last commit comes again, and is deduplicated.
            self._left_events_unhandled = True
            # faust's wait swallows a cancellation (its wait for an ack catches
            # CancelledError, faust-streaming 0.15.3); it ends once nothing is left to wait for.
            self._unacked_messages.clear()
        await waiting

    async def commit(self, *args, **kwargs) -> bool:
        if self._left_events_unhandled:
            return False
        return await super().commit(*args, **kwargs)


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
    broker_max_poll_interval=settings.max_poll_interval,
    stream_buffer_maxsize=settings.stream_buffer_size,
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
