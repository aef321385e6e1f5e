"""What every service wires the same way: engine, sessions, producer, its outbox relay
and its command consumer. Each service's bootstrap.py extends this with its own parts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from aiokafka import AIOKafkaProducer
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from infra.consumer_loop import ConsumerLoop
from infra.messaging_retention import Retention, run_pruning
from infra.metrics import count_published_from_zero
from infra.outbox_relay import OutboxRelay
from infra.users import UserDirectory
from schemas.registry import Message


@dataclass
class ServiceContainer:
    settings: object
    engine: AsyncEngine
    session_factory: async_sessionmaker
    producer: AIOKafkaProducer

    name: ClassVar[str]
    commands_topic: ClassVar[str]
    events_topic: ClassVar[str]  # what its outbox relay publishes to
    accepted_commands: ClassVar[frozenset[str]]
    users_table: ClassVar[Table]
    outbox_table: ClassVar[Table]
    inbox_table: ClassVar[Table]
    migrations_dir: ClassVar[Path]

    def uow(self):
        raise NotImplementedError

    @cached_property
    def users(self) -> UserDirectory:
        return UserDirectory(self.session_factory, self.users_table, self.settings.token_cache_seconds)

    async def handle_command(self, message: Message, topic: str) -> None:
        raise NotImplementedError

    async def handle_commands(self, messages: list[Message], topic: str) -> None:
        """Several commands in one transaction: all applied, or none (raises)."""
        raise NotImplementedError

    async def on_startup(self) -> None:
        """Runs once before the relay, the consumer and the background jobs start."""

    async def on_shutdown(self) -> None:
        """Runs once after the relay, the consumer and the background jobs have stopped."""

    def background_jobs(self) -> list:
        """Extra coroutines the service runs beside its API (e.g. metric refreshers)."""
        return []

    def relay(self) -> OutboxRelay:
        count_published_from_zero(self.name, self.events_topic)
        return OutboxRelay(self.session_factory, self.outbox_table, self.producer, service=self.name)

    def pruning(self):
        """The job that deletes outbox and inbox rows past their retention."""
        return run_pruning(self.engine, self.outbox_table, self.inbox_table, Retention.from_settings(self.settings),
                           self.settings.messaging_prune_seconds)

    def command_consumer(self) -> ConsumerLoop:
        return ConsumerLoop(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, topic=self.commands_topic,
            group_id=self.settings.consumer_group, accepted_types=self.accepted_commands,
            handler=self.handle_command, producer=self.producer,
            batch_handler=self.handle_commands, batch_size=self.settings.consumer_batch,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            session_timeout_ms=self.settings.session_timeout_ms,
        )
