#!/usr/bin/env bash
# Provisions every topic on the Apache Kafka cluster (idempotent). Partitions and
# replication are explicit; data topics keep 7 days, dead letters 30 days, the bridge
# control topic is compacted (only the latest decision per direction matters).
set -euo pipefail
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:?}"
PARTITIONS="${KAFKA_TOPIC_PARTITIONS:-12}"
REPLICATION="${KAFKA_REPLICATION_FACTOR:-3}"
TOPICS_CMD="${KAFKA_TOPICS_CMD:-/opt/kafka/bin/kafka-topics.sh}"

create() {  # name partitions configs...
  local name="$1" partitions="$2"; shift 2
  "$TOPICS_CMD" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$name" \
    --partitions "$partitions" --replication-factor "$REPLICATION" --config min.insync.replicas=2 "$@"
}

for topic in crm.events ecm.commands ecm.events crm.commands; do
  create "$topic" "$PARTITIONS" --config retention.ms=604800000
  create "$topic.dlq" "$PARTITIONS" --config retention.ms=2592000000
done
create bridge.control 1 --config cleanup.policy=compact
