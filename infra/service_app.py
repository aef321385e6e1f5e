"""Builds a service's FastAPI app: API router, health, correlation ids, and the
background relay and consumer started with the app and stopped with it."""

from __future__ import annotations

import asyncio
import errno
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from infra import business_day
from infra.db import database_reachable, migrations_at_head
from infra.kafka import broker_reachable
from infra.metrics import DEPENDENCY_UP, REQUESTS_REFUSED
from infra.outages import DATABASE_OUTAGES, RETRY_AFTER_SECONDS, database_unavailable
from infra.runtime import REQUEST_JOBS, BackgroundTasks, settle_garbage_collector, start_producer
from infra.web import CorrelationIdMiddleware, RejectUnstorableText

log = structlog.get_logger()


def build_app(*, title: str, service: str, container, routers: list[APIRouter]) -> FastAPI:
    settings = container.settings
    business_day.use_zone(settings.business_timezone)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await container.on_startup()
        tasks = BackgroundTasks()
        # The API serves at once, broker or not: the events wait in the outbox and the
        # relay starts once the producer is up (see _start_messaging).
        tasks.spawn("messaging", _start_messaging(container, tasks))
        tasks.spawn("command-consumer", container.command_consumer().run_forever())
        tasks.spawn("messaging-pruning", container.pruning())
        tasks.spawn("dependency-probe", _probe_dependencies(container, service))
        for i, job in enumerate(container.background_jobs()):
            tasks.spawn(f"job-{i}", job)
        frozen = settle_garbage_collector(settings.gc_gen0_threshold)
        log.info("service_started", port=settings.port, env=settings.app_env, gc_frozen=frozen)
        try:
            yield
        finally:
            # Imports and bulk loads first, while the relay and consumer still run: each
            # ends after its chunk in hand and says where it stopped.
            if stopped := await REQUEST_JOBS.stop():
                log.warning("jobs_stopped", jobs=stopped)
            await tasks.stop()
            await container.on_shutdown()
            await container.producer.stop()
            await container.engine.dispose()
            log.info("service_stopped")

    for reason in ("database_unavailable", "storage_full"):  # series from the start, for the alerts
        REQUESTS_REFUSED.labels(service, reason)

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.container = container
    app.state.service = service
    app.add_middleware(RejectUnstorableText)
    app.add_middleware(CorrelationIdMiddleware, service=service)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": jsonable_errors(exc)})

    for error in DATABASE_OUTAGES:
        app.add_exception_handler(error, _database_unavailable)
    app.add_exception_handler(OSError, _storage_full)

    @app.get("/live", tags=["operations"])
    async def live():
        """Liveness: the process answers. Nothing it depends on is checked, so that an
        outage of the database or the broker does not get every replica restarted."""
        return {"live": True, "service": service}

    @app.get("/health", tags=["operations"])
    async def health():
        db_ok, broker_ok = await _dependencies_up(container, service)
        status = "ok" if db_ok and broker_ok else "degraded"
        return JSONResponse(
            status_code=200 if status == "ok" else 503,
            content={"status": status, "service": service, "database": db_ok, "broker": broker_ok},
        )

    @app.get("/ready", tags=["operations"])
    async def ready():
        """Ready to serve its users: the database is reachable and migrated. The broker is
        reported but not required: while it is away, what users do is kept in the outbox
        and goes out when it is back, so sales and approvers keep working."""
        db_ok, broker_ok = await _dependencies_up(container, service)
        migrated = db_ok and await migrations_at_head(container.engine, container.migrations_dir)
        ok = db_ok and migrated
        return JSONResponse(
            status_code=200 if ok else 503,
            content={"ready": ok, "database": db_ok, "broker": broker_ok, "migrations_at_head": migrated},
        )

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    app.openapi = lambda: _openapi_with_plain_422(app)
    return app


DEPENDENCY_PROBE_SECONDS = 15.0


async def _dependencies_up(container, service: str) -> tuple[bool, bool]:
    db_ok = await database_reachable(container.engine)
    broker_ok = await broker_reachable(container.producer)
    DEPENDENCY_UP.labels(service, "database").set(1 if db_ok else 0)
    DEPENDENCY_UP.labels(service, "broker").set(1 if broker_ok else 0)
    return db_ok, broker_ok


async def _probe_dependencies(container, service: str) -> None:
    """service_dependency_up, kept current without traffic (the DatabaseUnreachable alert
    reads it): a process that answers /metrics but cannot reach its database serves no one."""
    while True:
        try:
            await _dependencies_up(container, service)
        except Exception as exc:  # noqa: BLE001 - a probe must not die
            log.warning("dependency_probe_failed", error=str(exc))
        await asyncio.sleep(DEPENDENCY_PROBE_SECONDS)


async def _start_messaging(container, tasks: BackgroundTasks) -> None:
    """The topics and the producer, tried until the broker answers, then the outbox relay.
    Before, a service whose broker was away at start did not serve at all: its start
    waited 60 s for the broker, then failed."""
    settings = container.settings
    await start_producer(container.producer, settings.kafka_bootstrap_servers, settings.topic_partitions,
                         replication=settings.topic_replication)
    log.info("producer_started")
    tasks.spawn("outbox-relay", container.relay().run_forever())


async def _database_unavailable(request: Request, exc: Exception):
    """A request that found the database away is answered 503 with Retry-After (a page
    on a page, JSON on the API), not 500: the caller did nothing wrong and may try again.
    Any other database error is still a 500, as before."""
    if not database_unavailable(exc):
        raise exc
    log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
    return await _refused(request, "database_unavailable", 503,
                          "the database is unavailable for a moment; try again shortly",
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _storage_full(request: Request, exc: Exception):
    """An upload that finds the disk full (or the quota used up) is answered 507 and says
    so; the store has already removed its partial file (ContentStore.stage). Any other
    OSError is still a 500. The bridge retries a 5xx, so a transfer resumes once space is
    made."""
    if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        raise exc
    log.error("storage_full", path=request.url.path)
    return await _refused(request, "storage_full", 507, "no space left to store the file; nothing was stored")


async def _refused(request: Request, reason: str, status: int, detail: str, headers: dict | None = None):
    """Counted (service_requests_refused_total), then answered as any HTTP refusal is:
    by the pages' own handler where a service has pages, JSON on the API."""
    REQUESTS_REFUSED.labels(request.app.state.service, reason).inc()
    answer = request.app.exception_handlers[StarletteHTTPException]
    return await answer(request, StarletteHTTPException(status, detail, headers=headers))


def _openapi_with_plain_422(app: FastAPI) -> dict:
    """A 422 is either the field errors of a malformed request or one sentence about
    input that is well-formed but unusable (a bad external ref, an empty file): the
    documented schema says so, so clients and schema checks can rely on it."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        detail = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError", {}) \
            .get("properties", {}).get("detail")
        if detail is not None:
            schema["components"]["schemas"]["HTTPValidationError"]["properties"]["detail"] = {
                "anyOf": [detail, {"type": "string"}], "title": "Detail"}
        app.openapi_schema = schema
    return app.openapi_schema


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    # Input values are left out: they may hold personal data and end up in logs.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
