"""What an outage looks like from inside a call: something the call needs (the database,
the other service, its disk) cannot serve it for a while. The call itself was fine, so
an API answers 503 and asks for a retry, and a consumer waits for the dependency instead
of dead-lettering a good message (infra.retrying.call_with_retries)."""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SqlAlchemyTimeout

# What a database outage raises: asyncpg's connect errors come as they are (refused,
# reset, timed out, a host name that does not resolve); SQLAlchemy wraps an error on an
# open connection, and raises its own TimeoutError when the pool has none to give.
DATABASE_OUTAGES = (ConnectionError, TimeoutError, socket.gaierror, DBAPIError, SqlAlchemyTimeout)
# PostgreSQL's own refusals for a while: connection exceptions (08), the server shutting
# down or starting up (57P01-57P03), too many connections (53300).
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
# What the services ask a caller to wait after a 503 of theirs.
RETRY_AFTER_SECONDS = 5
# HTTP answers that say "not now" rather than "not this": too many requests, a gateway
# without its upstream, unavailable, a gateway's timeout, no space left to store.
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504, 507})
# Connecting failed: nothing about the request itself was seen by the other side. A read
# timeout is not here: a request that is slow to serve may be slow every time.
_HTTP_OUTAGES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ServiceUnavailable(Exception):
    """Another service answered that it cannot serve for a while (UNAVAILABLE_STATUSES),
    with the wait it asked for, if any (its Retry-After, in seconds)."""

    def __init__(self, message: str, *, status: int, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A Retry-After header's wait in seconds (delay-seconds or an HTTP date), or None
    when there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        state = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or state.startswith(_UNAVAILABLE_STATES)
    return isinstance(exc, DATABASE_OUTAGES)


def unavailable(exc: BaseException | None) -> bool:
    """The failure is a dependency away for a while, not the call's own fault: the
    database (database_unavailable), another service that cannot be reached or says it
    cannot serve now (ServiceUnavailable)."""
    if exc is None:
        return False
    return isinstance(exc, (ServiceUnavailable, *_HTTP_OUTAGES)) or database_unavailable(exc)


def retry_after_of(exc: BaseException | None) -> float | None:
    return getattr(exc, "retry_after", None)
