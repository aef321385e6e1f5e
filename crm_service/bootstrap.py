"""The one place the CRM's real adapters are wired."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from crm_service.adapters import tables
from crm_service.config import CrmSettings
from crm_service.service_layer import handlers
from crm_service.service_layer.reminders import run_reminders
from crm_service.service_layer.unit_of_work import CrmUnitOfWork
from infra.container import ServiceContainer
from infra.content_store import ContentStore
from infra.db import make_engine, make_session_factory
from infra.kafka import make_producer
from schemas.topics import CRM_COMMANDS, CRM_EVENTS


def load_funnel(path: Path) -> dict:
    funnel = json.loads(path.read_text())
    stages, closed = funnel.get("stages") or [], funnel.get("closed") or []
    if not stages or not set(closed) <= set(stages) or len(set(stages)) != len(stages):
        raise ValueError(f"{path}: needs distinct 'stages', and 'closed' among them")
    return funnel


@dataclass
class CrmContainer(ServiceContainer):
    file_store: ContentStore | None = None
    funnel: dict = field(default_factory=dict)

    name = "crm"
    commands_topic = CRM_COMMANDS
    events_topic = CRM_EVENTS
    accepted_commands = handlers.ACCEPTED_COMMANDS
    users_table = tables.users
    outbox_table = tables.outbox
    inbox_table = tables.inbox
    migrations_dir = Path(__file__).parent / "migrations"

    def uow(self) -> CrmUnitOfWork:
        return CrmUnitOfWork(self.session_factory)

    @property
    def unanswered_after(self) -> timedelta:
        return timedelta(minutes=self.settings.unanswered_after_minutes)

    async def handle_command(self, message, topic: str) -> None:
        await handlers.apply_command(self.uow(), message, topic)

    async def handle_commands(self, messages, topic: str) -> None:
        await handlers.apply_commands(self.uow(), messages, topic)

    def background_jobs(self) -> list:
        return [run_reminders(self.uow, self.settings)]


def bootstrap(settings: CrmSettings | None = None) -> CrmContainer:
    settings = settings or CrmSettings()
    engine = make_engine(settings.database_url)
    return CrmContainer(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        producer=make_producer(settings.kafka_bootstrap_servers),
        file_store=ContentStore(settings.files_dir),
        funnel=load_funnel(settings.funnel_file),
    )
