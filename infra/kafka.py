"""Kafka plumbing used by the services: producer, topic provisioning, reachability."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

log = structlog.get_logger()

TOPIC_ALREADY_EXISTS = 36


def make_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    # acks=all and no idempotent producer: the local broker has no transactions or
    # producer ids, and every consumer dedupes by message id anyway.
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, request_timeout_ms=15000)


async def ensure_topics(bootstrap_servers: str, topics: dict[str, int], *, timeout: float = 30.0,
                        replication_factor: int = 1) -> None:
    """Create topics with explicit partition counts; existing topics are left alone (in
    production deploy/kafka/create-topics.sh provisions them first, with their configs)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(name, partitions, replication_factor)
                       for name, partitions in topics.items() if name not in existing]
            if missing:
                response = await admin.create_topics(missing)
                for name, code, message in _topic_errors(response):
                    if code not in (0, TOPIC_ALREADY_EXISTS):
                        raise RuntimeError(f"cannot create topic {name}: {code} {message}")
                log.info("topics_created", topics=[t.name for t in missing])
            return
        except (TimeoutError, OSError, KafkaConnectionError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"broker {bootstrap_servers} unreachable: {exc}") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def _topic_errors(response):
    for item in response.topic_errors:
        yield item[0], item[1], item[2] if len(item) > 2 else None


async def broker_reachable(producer: AIOKafkaProducer, timeout: float = 3.0) -> bool:
    if not producer.client.cluster.brokers():
        # Not started yet (the service's start keeps trying in the background): it knows
        # no broker to ask, and asking anyway made aiokafka log "Unable to update metadata
        # from []" as an error at every start.
        return False
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout)
        return True
    except Exception:
        return False
