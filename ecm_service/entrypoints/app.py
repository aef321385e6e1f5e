from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ecm_service.bootstrap import bootstrap
from ecm_service.config import EcmSettings
from ecm_service.domain.approval import ApprovalClosed, DecisionNotAllowed, InvalidDecision
from ecm_service.domain.routes import InvalidRoute
from ecm_service.entrypoints.api import router
from ecm_service.entrypoints.approvals_api import router as approvals_router
from ecm_service.entrypoints.bulk_load_api import router as bulk_load_router
from ecm_service.entrypoints.bulk_load_pages import router as bulk_load_pages_router
from ecm_service.entrypoints.counterparty_pages import router as counterparty_pages_router
from ecm_service.entrypoints.originals_api import router as originals_router
from ecm_service.entrypoints.pages import error_page
from ecm_service.entrypoints.pages import router as pages_router
from ecm_service.entrypoints.reconciliation_api import router as reconciliation_router
from ecm_service.entrypoints.registry_api import router as registry_router
from ecm_service.entrypoints.retention_api import router as retention_router
from ecm_service.entrypoints.sheet_api import router as sheet_router
from ecm_service.service_layer import approvals, documents, originals
from ecm_service.service_layer.access import Forbidden
from infra.logs import configure_logging
from infra.pages import answer_pages_with_pages, on_page
from infra.service_app import build_app

# Domain refusals, answered the same way wherever they are raised.
ERROR_STATUS = {
    Forbidden: 403, DecisionNotAllowed: 403, ApprovalClosed: 409, InvalidDecision: 422, InvalidRoute: 422,
    approvals.NotFound: 404, documents.NotFound: 404, documents.DocumentGone: 410,
    originals.OriginalConflict: 409, originals.InvalidOriginal: 422,
}


def create_app(settings: EcmSettings | None = None) -> FastAPI:
    container = bootstrap(settings)
    configure_logging("ecm", json_logs=container.settings.json_logs, level=container.settings.log_level)
    # The more specific paths (bulk loads, sheets) go before the generic /{id} routes.
    routers = [bulk_load_router, sheet_router, retention_router, originals_router, router, approvals_router,
               registry_router,
               reconciliation_router, pages_router, bulk_load_pages_router, counterparty_pages_router]
    app = build_app(title="ECM", service="ecm", container=container, routers=routers)
    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, _answer(status))

    answer_pages_with_pages(app, error_page)
    return app


def _answer(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if on_page(request):
            return error_page(request, status, str(exc))
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    return handler
