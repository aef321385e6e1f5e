"""Pause and resume of each direction, decided by operators on the control topic.

Every worker reads the whole control topic (no consumer group) and keeps following it.
A paused direction's agent stops before its next event: nothing is skipped, nothing is
reordered, offsets stay where they are, and there is no cap on how long a pause lasts.
Until the worker has read the control topic to its end once, both directions stay
closed, so a worker that restarts during a pause does not slip a message through. That
state is reported as "starting", not as a pause: no operator decided it, and an alert
that a pause silences must still see a worker that never gets past it."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.topic_inspection import end_offsets
from schemas.topics import BRIDGE_CONTROL

log = structlog.get_logger()

CRM_TO_ECM = "crm-to-ecm"
ECM_TO_CRM = "ecm-to-crm"
DIRECTIONS = (CRM_TO_ECM, ECM_TO_CRM)
STARTING, OPEN, PAUSED = "starting", "open", "paused"


def control_record(direction: str, *, paused: bool, reason: str | None, by: str) -> tuple[bytes, bytes]:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
    value = {"paused": paused, "reason": reason, "by": by, "at": datetime.now(timezone.utc).isoformat()}
    return direction.encode(), json.dumps(value).encode()


def fold(records) -> dict[str, dict]:
    """The latest decision per direction (what compaction keeps)."""
    state: dict[str, dict] = {}
    for record in records:
        try:
            direction, value = record.key.decode(), json.loads(record.value)
        except (AttributeError, ValueError):
            continue  # a foreign record on the control topic changes nothing
        if direction in DIRECTIONS and isinstance(value, dict):
            state[direction] = value
    return state


class DirectionGates:
    def __init__(self):
        self._open = {d: asyncio.Event() for d in DIRECTIONS}
        self.state: dict[str, dict] = {}
        self.caught_up = False  # the control topic read to its end once

    def is_paused(self, direction: str) -> bool:
        """Whether an operator's decision holds the direction (not the start-up state)."""
        return self.caught_up and not self._open[direction].is_set()

    def describe(self, direction: str) -> str:
        if not self.caught_up:
            return STARTING
        return PAUSED if self.is_paused(direction) else OPEN

    async def wait_open(self, direction: str) -> None:
        if not self._open[direction].is_set():
            log.info("direction_waiting", direction=direction)
            await self._open[direction].wait()

    def apply(self, state: dict[str, dict]) -> None:
        self.state.update(state)
        for direction in DIRECTIONS:
            paused = bool(self.state.get(direction, {}).get("paused"))
            if paused and self._open[direction].is_set():
                self._open[direction].clear()
                log.warning("direction_paused", direction=direction)
            elif not paused and not self._open[direction].is_set():
                self._open[direction].set()
                log.info("direction_open", direction=direction)

    def catch_up(self, state: dict[str, dict]) -> None:
        """The decisions read up to the topic's end when the worker started (or read it again)."""
        self.apply(state)
        if not self.caught_up:
            self.caught_up = True
            log.info("control_caught_up", state=self.state)

    async def follow(self, bootstrap: str) -> None:
        """Reads the control topic from the start, opens the gates once caught up,
        then applies every new decision as it arrives."""
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            tp = TopicPartition(BRIDGE_CONTROL, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await end_offsets(bootstrap, [BRIDGE_CONTROL])).get(tp, 0)
            seen: list = []
            while await consumer.position(tp) < end:
                for items in (await consumer.getmany(timeout_ms=500)).values():
                    seen.extend(items)
            self.catch_up(fold(seen))
            while True:
                for items in (await consumer.getmany(timeout_ms=1000)).values():
                    self.apply(fold(items))
        finally:
            await consumer.stop()
