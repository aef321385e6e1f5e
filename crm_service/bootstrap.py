"""The one place the CRM's real adapters are wired."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from crm_service.adapters import tables
from crm_service.config import CrmSettings
from crm_service.service_layer import handlers
from crm_service.service_layer.unit_of_work import CrmUnitOfWork
from infra.consumer_loop import ConsumerLoop
from infra.content_store import ContentStore
from infra.db import make_engine, make_session_factory
from infra.kafka import make_producer
from infra.outbox_relay import OutboxRelay
from schemas.topics import CRM_COMMANDS


@dataclass
class CrmContainer:
    settings: CrmSettings
    engine: AsyncEngine
    session_factory: async_sessionmaker
    producer: AIOKafkaProducer
    file_store: ContentStore
    users_table = tables.users

    def uow(self) -> CrmUnitOfWork:
        return CrmUnitOfWork(self.session_factory)

    def relay(self) -> OutboxRelay:
        return OutboxRelay(self.session_factory, tables.outbox, self.producer)

    def command_consumer(self) -> ConsumerLoop:
        async def handle(message, topic):
            await handlers.apply_command(self.uow(), message, topic)

        return ConsumerLoop(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, topic=CRM_COMMANDS,
            group_id=self.settings.consumer_group, accepted_types=handlers.ACCEPTED_COMMANDS,
            handler=handle, producer=self.producer,
        )


def bootstrap(settings: CrmSettings | None = None) -> CrmContainer:
    settings = settings or CrmSettings()
    engine = make_engine(settings.database_url)
    return CrmContainer(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        producer=make_producer(settings.kafka_bootstrap_servers),
        file_store=ContentStore(settings.files_dir),
    )
