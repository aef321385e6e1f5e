from fastapi import FastAPI

from crm_service.bootstrap import bootstrap
from crm_service.config import CrmSettings
from crm_service.entrypoints.api import router
from infra.logs import configure_logging
from infra.service_app import build_app


def create_app(settings: CrmSettings | None = None) -> FastAPI:
    container = bootstrap(settings)
    configure_logging("crm", json_logs=container.settings.json_logs, level=container.settings.log_level)
    return build_app(title="CRM", service="crm", container=container, routers=[router])
