"""The one place the ECM's real adapters are wired."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ecm_service.adapters import tables
from ecm_service.config import EcmSettings
from ecm_service.domain.approval import Route
from ecm_service.domain.routes import load_routes
from ecm_service.service_layer.commands import ACCEPTED_COMMANDS, apply_command
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra.consumer_loop import ConsumerLoop
from infra.content_store import ContentStore
from infra.db import make_engine, make_session_factory
from infra.kafka import make_producer
from infra.outbox_relay import OutboxRelay
from schemas.topics import ECM_COMMANDS


@dataclass
class EcmContainer:
    settings: EcmSettings
    engine: AsyncEngine
    session_factory: async_sessionmaker
    producer: AIOKafkaProducer
    content_store: ContentStore
    routes: dict[str, Route]
    users_table = tables.users

    def uow(self) -> EcmUnitOfWork:
        return EcmUnitOfWork(self.session_factory)

    def relay(self) -> OutboxRelay:
        return OutboxRelay(self.session_factory, tables.outbox, self.producer)

    def command_consumer(self) -> ConsumerLoop:
        async def handle(message, topic):
            await apply_command(self.uow(), message, topic, self.routes)

        return ConsumerLoop(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, topic=ECM_COMMANDS,
            group_id=self.settings.consumer_group, accepted_types=ACCEPTED_COMMANDS,
            handler=handle, producer=self.producer,
        )


def bootstrap(settings: EcmSettings | None = None) -> EcmContainer:
    settings = settings or EcmSettings()
    engine = make_engine(settings.database_url)
    return EcmContainer(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        producer=make_producer(settings.kafka_bootstrap_servers),
        content_store=ContentStore(settings.content_dir),
        routes=load_routes(settings.routes_file),
    )
