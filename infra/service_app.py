"""Builds a service's FastAPI app: API router, health, correlation ids, and the
background relay and consumer started with the app and stopped with it."""

from __future__ import annotations

from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from infra.db import database_reachable
from infra.kafka import broker_reachable
from infra.runtime import BackgroundTasks, start_producer
from infra.web import CorrelationIdMiddleware

log = structlog.get_logger()


def build_app(*, title: str, service: str, container, routers: list[APIRouter]) -> FastAPI:
    settings = container.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await start_producer(container.producer, settings.kafka_bootstrap_servers, settings.topic_partitions)
        tasks = BackgroundTasks()
        tasks.spawn("outbox-relay", container.relay().run_forever())
        tasks.spawn("command-consumer", container.command_consumer().run_forever())
        log.info("service_started", port=settings.port, env=settings.app_env)
        try:
            yield
        finally:
            await tasks.stop()
            await container.producer.stop()
            await container.engine.dispose()
            log.info("service_stopped")

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.container = container
    app.add_middleware(CorrelationIdMiddleware, service=service)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": jsonable_errors(exc)})

    @app.get("/health", tags=["operations"])
    async def health():
        db_ok = await database_reachable(container.engine)
        broker_ok = await broker_reachable(container.producer)
        status = "ok" if db_ok and broker_ok else "degraded"
        return JSONResponse(
            status_code=200 if status == "ok" else 503,
            content={"status": status, "service": service, "database": db_ok, "broker": broker_ok},
        )

    for router in routers:
        app.include_router(router)
    return app


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    # Input values are left out: they may hold personal data and end up in logs.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
