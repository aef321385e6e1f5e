"""Opt-in (TEST_WITH_TESTCONTAINERS=1, where a Docker engine runs): Apache Kafka and
PostgreSQL in containers instead of the local broker and server. The suites read the
addresses from the TEST_* variables set here."""

from __future__ import annotations

import os


def start_containers() -> list:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = KafkaContainer().with_kraft()
    postgres = PostgresContainer("postgres:16", username="postgres", password="postgres", dbname="postgres")
    kafka.start()
    postgres.start()
    os.environ["TEST_KAFKA_BOOTSTRAP_SERVERS"] = kafka.get_bootstrap_server()
    os.environ["TEST_PG_HOST"] = postgres.get_container_host_ip()
    os.environ["TEST_PG_PORT"] = str(postgres.get_exposed_port(5432))
    os.environ["TEST_PG_USER"] = "postgres"
    os.environ["TEST_PG_PASSWORD"] = "postgres"
    return [kafka, postgres]
