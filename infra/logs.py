"""Structured logs: JSON outside development, always with the correlation id.

Personal data (phones, e-mails, person names) is never passed to a logger; callers log
ids only.
"""

from __future__ import annotations

import logging
import sys
import uuid

import structlog
from pydantic import ValidationError
from structlog.contextvars import bind_contextvars, bound_contextvars, clear_contextvars

from schemas.registry import without_values

__all__ = ["configure_logging", "bind_contextvars", "bound_contextvars", "clear_contextvars", "error_text",
           "new_correlation_id"]


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def error_text(exc: BaseException, limit: int = 300) -> str:
    """An exception's text as a log line or a dead letter may carry it. A validation
    error's own text quotes every wrong value (personal data among them): only its fields
    and reasons are kept (schemas.registry.without_values). A database error's values are
    left out by the engines (`hide_parameters`, infra.db)."""
    if isinstance(exc, ValidationError):
        return without_values(exc)[:limit]
    return str(exc)[:limit]


def configure_logging(service: str, *, json_logs: bool, level: str = "INFO") -> logging.Handler:
    """structlog for our own lines (written straight to stdout), and one handler on the
    root logger that renders the libraries' records (aiokafka, faust, uvicorn,
    SQLAlchemy) the same way: JSON outside development, with the service, the level, the
    logger's name and the correlation id when one is bound. Returns that handler (the
    bridge gives it to faust, which sets up logging again when its worker starts)."""
    def name_the_service(_logger, _method, event: dict) -> dict:
        # Every line, a thread's too (the bridge's consumer thread has a context of its own).
        event.setdefault("service", service)
        return event

    processors = [
        structlog.contextvars.merge_contextvars,
        name_the_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*processors, structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info,
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*processors, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    return handler
