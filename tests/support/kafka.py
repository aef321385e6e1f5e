"""Reading and writing topics directly, as an operator or a foreign producer would."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from deploy.broker import free_port, start_broker, wait_for_port
from deploy.processes import stop_child
from infra.topic_inspection import read_records


class LocalBroker:
    """The broker the tests use: TEST_KAFKA_BOOTSTRAP_SERVERS if set, else a Tansu
    process of our own. If it cannot start, the run fails loudly."""

    def __init__(self, log_dir: Path):
        self._process = None
        external = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
        if external:
            self.bootstrap = external
            host, _, port = external.split(",")[0].rpartition(":")
            try:
                wait_for_port(int(port), timeout=10, host=host)
            except TimeoutError as exc:
                pytest.fail(f"broker {external} is not reachable: {exc}", pytrace=False)
            return
        port = free_port()
        try:
            self._process = start_broker(port, log_dir / "broker.log")
        except Exception as exc:  # a missing binary or a port that never opens
            pytest.fail(f"the local Kafka-compatible broker could not start: {exc}", pytrace=False)
        self.bootstrap = f"127.0.0.1:{port}"

    def stop(self) -> None:
        if self._process is not None:
            stop_child(self._process)


async def read_all(bootstrap: str, topic: str, *, timeout: float = 5.0) -> list:
    return await read_records(bootstrap, topic, timeout=timeout)


async def produce(bootstrap: str, topic: str, value: bytes | None, *, key: bytes | None = None,
                  headers: list | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key or uuid.uuid4().hex.encode(), headers=headers)
    finally:
        await producer.stop()


async def republish(bootstrap: str, records) -> int:
    """Replay: the same records written again to their topics, keys and headers kept."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(r.topic, value=r.value, key=r.key, headers=list(r.headers or ()))
    finally:
        await producer.stop()
    return len(records)
