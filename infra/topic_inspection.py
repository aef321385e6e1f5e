"""Reading topics as an operator does: every record of a topic, true end offsets, and
what a consumer group has committed. No group is joined."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer.client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(found or ())]


async def read_records(bootstrap: str, topic: str, *, timeout: float = 10.0) -> list:
    """Every record currently in a topic, from the beginning of each partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()
        partitions = await _partitions(consumer, topic)
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records = []
        deadline = asyncio.get_running_loop().time() + timeout
        # A partition is read to its end when the position passes the reported end offset;
        # the last fetch returns the whole last batch, so nothing is left behind.
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for items in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(items)
            if asyncio.get_running_loop().time() > deadline:
                break
        return records
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """The offset after each partition's last record. Some brokers (the local Tansu)
    report the base offset of the last record batch + 1; the last batch is fetched to
    find the true end, which also holds on Apache Kafka."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()
        partitions = [tp for topic in topics for tp in await _partitions(consumer, topic)]
        if not partitions:
            return {}
        reported = await consumer.end_offsets(partitions)
        result = dict(reported)
        tail = [tp for tp in partitions if reported[tp] > 0]
        if tail:
            consumer.assign(tail)
            for tp in tail:
                consumer.seek(tp, reported[tp] - 1)
            pending = set(tail)
            deadline = asyncio.get_running_loop().time() + 5
            while pending and asyncio.get_running_loop().time() < deadline:
                for tp, items in (await consumer.getmany(*pending, timeout_ms=300)).items():
                    result[tp] = max(result[tp], items[-1].offset + 1)
                    pending.discard(tp)
        return result
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, partitions: list[TopicPartition]) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        found = await admin.list_consumer_group_offsets(group, partitions=partitions)
        return {tp: (meta.offset if meta is not None and meta.offset >= 0 else None) for tp, meta in found.items()}
    finally:
        await admin.close()


async def group_members(bootstrap: str, groups: list[str]) -> dict[str, dict]:
    """Each consumer group's state as the broker's coordinator has it ("Stable",
    "PreparingRebalance", "CompletingRebalance", "Empty", "Dead") and its members (id,
    client id, host; the local broker leaves the last two empty). A group with lag and no
    member is one nobody reads."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        described = {}
        # One group per request: the local broker's answer to several at once cannot be
        # decoded ("Buffer underrun decoding string").
        responses = [response for group in groups for response in await admin.describe_consumer_groups([group])]
        for response in responses:
            for error_code, group, state, _protocol_type, _protocol, members, *_ in response.groups:
                described[group] = {
                    "state": state if error_code == 0 else f"error {error_code}",
                    "members": [{"member_id": member[0], "client_id": member[1], "host": member[2]}
                                for member in members],
                }
        return described
    finally:
        await admin.close()
