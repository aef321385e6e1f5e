"""Technical plumbing shared by the deployables: logs, database engines, the
transactional outbox and inbox, Kafka topic provisioning, the consumer loop with
dead letters, and API tokens. Knows no business vocabulary."""
