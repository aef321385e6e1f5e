"""The one place the ECM's real adapters are wired."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ecm_service.adapters import tables
from ecm_service.config import EcmSettings
from ecm_service.domain.approval import Route
from ecm_service.domain.retention import load_retention
from ecm_service.domain.routes import load_routes
from ecm_service.service_layer.commands import ACCEPTED_COMMANDS, apply_command
from ecm_service.service_layer.metrics import refresh_approval_metrics
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra.container import ServiceContainer
from infra.content_store import ContentStore
from infra.db import make_engine, make_session_factory
from infra.kafka import make_producer
from schemas.topics import ECM_COMMANDS


@dataclass
class EcmContainer(ServiceContainer):
    content_store: ContentStore | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    retention: dict[str, int] = field(default_factory=dict)

    name = "ecm"
    commands_topic = ECM_COMMANDS
    accepted_commands = ACCEPTED_COMMANDS
    users_table = tables.users
    outbox_table = tables.outbox
    migrations_dir = Path(__file__).parent / "migrations"

    def uow(self) -> EcmUnitOfWork:
        return EcmUnitOfWork(self.session_factory)

    async def handle_command(self, message, topic: str) -> None:
        await apply_command(self.uow(), message, topic, self.routes)

    def background_jobs(self) -> list:
        return [refresh_approval_metrics(self.session_factory)]


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
        retention=load_retention(settings.document_types_file),
    )
