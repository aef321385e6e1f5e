"""The one place the ECM's real adapters are wired."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import structlog

from ecm_service.adapters import tables
from ecm_service.config import EcmSettings
from ecm_service.domain import matching
from ecm_service.domain.approval import Route
from ecm_service.domain.document_types import DocumentType, load_document_types
from ecm_service.domain.retention import load_retention
from ecm_service.domain.routes import load_routes
from ecm_service.service_layer import bulk_matching
from ecm_service.service_layer.approvals import sync_routes_from_file
from ecm_service.service_layer.commands import ACCEPTED_COMMANDS, apply_command, apply_commands
from ecm_service.service_layer.metrics import refresh_approval_metrics, run_deadline_clock
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra.container import ServiceContainer
from infra.content_store import ContentStore
from infra.db import make_engine, make_session_factory
from infra.kafka import make_producer
from schemas.topics import ECM_COMMANDS, ECM_EVENTS

log = structlog.get_logger()


DELAY_REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")  # fits the approvals' and the CRM's column


def load_delay_reasons(path: Path) -> dict[str, str]:
    codes = json.loads(path.read_text())
    if not isinstance(codes, dict) or not codes or not all(isinstance(v, str) and v.strip() for v in codes.values()):
        raise ValueError(f"{path}: expected {{code: label, ...}} with at least one code and no empty label")
    if bad := [code for code in codes if not DELAY_REASON_CODE.fullmatch(code)]:
        raise ValueError(f"{path}: codes are stored and sent to the CRM, so each is 1 to 64 characters of a-z, 0-9 "
                         f"and _, starting with a letter; not {', '.join(map(repr, bad))}")
    return codes


@dataclass
class EcmContainer(ServiceContainer):
    content_store: ContentStore | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    retention: dict[str, int] = field(default_factory=dict)
    document_types: dict[str, DocumentType] = field(default_factory=dict)
    delay_reasons: dict[str, str] = field(default_factory=dict)

    name = "ecm"
    commands_topic = ECM_COMMANDS
    events_topic = ECM_EVENTS
    accepted_commands = ACCEPTED_COMMANDS
    users_table = tables.users
    outbox_table = tables.outbox
    inbox_table = tables.inbox
    migrations_dir = Path(__file__).parent / "migrations"

    def uow(self) -> EcmUnitOfWork:
        return EcmUnitOfWork(self.session_factory)

    async def handle_command(self, message, topic: str) -> None:
        await apply_command(self.uow(), message, topic, self.routes, self.document_types)

    async def handle_commands(self, messages, topic: str) -> None:
        await apply_commands(self.uow(), messages, topic, self.routes, self.document_types)

    async def on_startup(self) -> None:
        try:
            added = await sync_routes_from_file(self.uow(), self.routes, at=datetime.now(timezone.utc))
        except Exception as exc:  # not migrated yet: routes are then seeded on first use
            log.warning("route_sync_failed", error=str(exc))
        else:
            if added:
                log.info("route_versions_added", versions=added)

    async def on_shutdown(self) -> None:
        if (workers := bulk_matching.configured()) is not None:
            workers.close()

    def background_jobs(self) -> list:
        return [refresh_approval_metrics(self.session_factory),
                run_deadline_clock(self.uow, self.settings.deadline_check_seconds)]


def bootstrap(settings: EcmSettings | None = None) -> EcmContainer:
    settings = settings or EcmSettings()
    matching.configure(matching.Thresholds(
        name_propose=settings.match_name_propose, name_with_id=settings.match_name_with_id,
        slip_min_length=settings.match_slip_min_length, prefetch=settings.match_prefetch,
        bulk_prefetch=settings.match_bulk_prefetch,
        scored=settings.match_scored,
        max_postings=settings.match_max_postings))
    bulk_matching.configure(
        bulk_matching.MatchWorkers(settings.database_url, settings.match_workers) if settings.match_workers else None)
    engine = make_engine(settings.database_url)
    return EcmContainer(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        producer=make_producer(settings.kafka_bootstrap_servers),
        content_store=ContentStore(settings.content_dir),
        routes=load_routes(settings.routes_file),
        retention=load_retention(settings.document_types_file),
        document_types=load_document_types(settings.document_types_file),
        delay_reasons=load_delay_reasons(settings.delay_reasons_file),
    )
