"""Prometheus metrics every process exposes on /metrics. Label values are bounded
(topics, message types, consumers, error classes): never ids or personal data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from schemas.registry import TYPES_ON_TOPIC

MESSAGES_CONSUMED = Counter(
    "bridge_messages_consumed_total", "Messages handled by a consumer, by outcome",
    ["consumer", "topic", "type", "outcome"],  # outcome: applied | dead_lettered
)
MESSAGES_PUBLISHED = Counter(
    "bridge_messages_published_total", "Messages produced (outbox relays and the bridge)",
    ["producer", "topic", "type"],
)
DELIVERY_FAILURES = Counter(
    "bridge_delivery_failures_total", "Failed handling attempts (each retry counts)",
    ["consumer", "topic", "type", "error_class"],
)
HANDLER_SECONDS = Histogram(
    "bridge_handler_seconds", "Time to handle one message, retries included", ["consumer", "type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_EVENTS = Histogram(
    "bridge_batch_events", "Events the bridge handled together in one batch (all of a worker's partitions)",
    ["direction"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
OUTBOX_BACKLOG = Gauge("bridge_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "bridge_outbox_oldest_unsent_age_seconds", "Age of the oldest unpublished outbox row", ["service"],
)
CONSUMER_LAG = Gauge(
    "bridge_consumer_lag", "Records behind the partition's high watermark", ["consumer", "topic", "partition"],
)
TRANSFER_BYTES = Counter("bridge_document_transfer_bytes_total", "Document bytes copied from the CRM to the ECM")
TRANSFERS = Counter(
    "bridge_document_transfers_total", "Document transfer attempts: copied, or failed (then retried)", ["outcome"],
)
APPROVALS_BY_STATE = Gauge("ecm_approvals", "ECM approvals by state", ["state"])
PAUSED = Gauge("bridge_direction_paused", "1 while an operator has paused the direction", ["direction"])

DEPENDENCY_UP = Gauge(
    "service_dependency_up", "1 while the service reaches its dependency (checked every 15 s and on /health)",
    ["service", "dependency"],  # dependency: database | broker
)
REQUESTS_REFUSED = Counter(
    "service_requests_refused_total", "Requests answered 503 (the database away) or 507 (no space left to store "
    "a file)", ["service", "reason"],  # reason: database_unavailable | storage_full
)
DB_ROUND_TRIPS = Counter(
    "db_round_trips_total", "Requests this process sent to its database and waited for: statements "
    "(a multi-row insert counts once), BEGIN, COMMIT and ROLLBACK",
)
ROWS_PRUNED = Counter(
    "messaging_rows_pruned_total", "Outbox and inbox rows deleted after their retention", ["table"],
)


class LagReport:
    """`bridge_consumer_lag` for one consumer. A partition's lag is set as its records are
    read; `keep_only` drops the partitions the consumer no longer holds, so after a
    rebalance no worker keeps reporting the last lag of a partition another one now reads
    (a sum over the workers would count it twice, and alert on a backlog that is gone)."""

    def __init__(self, consumer: str):
        self._consumer = consumer
        self._partitions: set[tuple[str, int]] = set()

    def set(self, topic: str, partition: int, lag: int) -> None:
        CONSUMER_LAG.labels(self._consumer, topic, str(partition)).set(lag)
        self._partitions.add((topic, partition))

    def keep_only(self, assigned: set[tuple[str, int]]) -> None:
        for topic, partition in self._partitions - assigned:
            CONSUMER_LAG.remove(self._consumer, topic, str(partition))
        self._partitions &= assigned


def count_published_from_zero(producer: str, topic: str) -> None:
    """Creates the producer's published counts at 0 for every type the topic carries. A
    series born at its first increment shows no rate() or increase() for it, so FlowStalled
    (published against consumed, whose counts start at 0 too: infra.delivery.count_from_zero)
    and the dashboard would miss a type's first messages until a second one came."""
    for message_type in TYPES_ON_TOPIC[topic]:
        MESSAGES_PUBLISHED.labels(producer, topic, message_type)
