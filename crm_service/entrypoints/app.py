from fastapi import FastAPI

from crm_service.bootstrap import bootstrap
from crm_service.config import CrmSettings
from crm_service.entrypoints.api import router
from crm_service.entrypoints.deal_pages import router as deal_pages_router
from crm_service.entrypoints.pages import error_page
from crm_service.entrypoints.pages import router as pages_router
from crm_service.entrypoints.sales_api import router as sales_router
from infra.logs import configure_logging
from infra.pages import answer_pages_with_pages
from infra.service_app import build_app


def create_app(settings: CrmSettings | None = None) -> FastAPI:
    container = bootstrap(settings)
    configure_logging("crm", json_logs=container.settings.json_logs, level=container.settings.log_level)
    # The sales router first: its fixed paths (/deals/board) go before /deals/{deal_id}.
    app = build_app(title="CRM", service="crm", container=container, routers=[sales_router, router, pages_router,
                                                                           deal_pages_router])
    answer_pages_with_pages(app, error_page)
    return app
