from fastapi import FastAPI

from ecm_service.bootstrap import bootstrap
from ecm_service.config import EcmSettings
from ecm_service.entrypoints.api import router
from ecm_service.entrypoints.bulk_load_api import router as bulk_load_router
from ecm_service.entrypoints.registry_api import router as registry_router
from ecm_service.entrypoints.retention_api import router as retention_router
from ecm_service.entrypoints.sheet_api import router as sheet_router
from infra.logs import configure_logging
from infra.service_app import build_app


def create_app(settings: EcmSettings | None = None) -> FastAPI:
    container = bootstrap(settings)
    configure_logging("ecm", json_logs=container.settings.json_logs, level=container.settings.log_level)
    # The more specific paths (bulk loads, sheets) go before the generic /{id} routes.
    routers = [bulk_load_router, sheet_router, retention_router, router, registry_router]
    return build_app(title="ECM", service="ecm", container=container, routers=routers)
