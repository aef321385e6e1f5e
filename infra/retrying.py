"""Retries for transient failures (as long as an outage lasts, bounded otherwise); permanent ones
are never retried."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from infra.logs import error_text
from infra.outages import retry_after_of, unavailable
from schemas.registry import InvalidMessage

log = structlog.get_logger()
T = TypeVar("T")


class PermanentError(Exception):
    """Retrying cannot help (bad data, a 4xx from an API): dead-letter at once."""


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt. Never a cancellation (a stopping worker, a timeout around the
    call): tenacity keeps whatever an attempt raises and asks this predicate whether to
    retry it (jd/tenacity#529); a cancellation must end the call instead."""
    return isinstance(exc, Exception) and not isinstance(exc, (PermanentError, InvalidMessage))


class AttemptsExhausted(Exception):
    def __init__(self, attempts: int, last: BaseException):
        super().__init__(f"{type(last).__name__}: {last}")
        self.attempts = attempts
        self.last = last


# The longest wait a Retry-After is followed for: beyond it the usual backoff's cap applies
# again (a wrong header must not park a partition for a day).
RETRY_AFTER_CEILING = 60.0


def backoff(max_wait: float) -> Callable[[RetryCallState], float]:
    """Exponential from 0.2 s up to `max_wait`, or longer when the failed answer asked for
    it (Retry-After, up to RETRY_AFTER_CEILING)."""
    exponential = wait_exponential(multiplier=0.2, max=max_wait)

    def wait(state: RetryCallState) -> float:
        asked = retry_after_of(state.outcome.exception() if state.outcome else None)
        return max(exponential(state), min(asked, RETRY_AFTER_CEILING)) if asked else exponential(state)
    return wait


async def call_with_retries(
    fn: Callable[[], Awaitable[T]], *, attempts: int, max_wait: float = 5.0,
    on_failure: Callable[[BaseException], None] | None = None,
) -> tuple[T, int]:
    """Returns (result, attempts used). Raises the permanent error itself, or
    AttemptsExhausted wrapping the last transient one.

    A failure because a dependency is away (infra.outages.unavailable: the database, the
    other service unreachable or answering 503, a full disk's 507) is tried again past
    `attempts`, for as long as the outage lasts, `max_wait` apart (or what its Retry-After
    asked): the message is good, and dead-lettering it for an outage left a good request
    waiting for someone to replay it. Before, a database restart of more than ~3 s
    dead-lettered the services' commands, and an ECM away for more than ~70 s the bridge's
    events. A failure of the call itself (a 500, a bug) still ends after `attempts`."""
    def stop(state: RetryCallState) -> bool:
        if state.attempt_number < attempts:
            return False
        failure = state.outcome.exception() if state.outcome else None
        if unavailable(failure):
            if state.attempt_number == attempts:
                log.warning("waiting_for_dependency", error_class=type(failure).__name__,
                            error=error_text(failure), attempts=attempts)
            return False
        return True

    retrying = AsyncRetrying(
        stop=stop,
        wait=backoff(max_wait),
        retry=retry_if_exception(is_transient),
        reraise=False,
    )
    try:
        async for attempt in retrying:
            with attempt:
                result = await fn()
            outcome = attempt.retry_state.outcome
            if not outcome.failed:
                if attempt.retry_state.attempt_number > attempts:
                    log.info("dependency_back", attempts=attempt.retry_state.attempt_number)
                return result, attempt.retry_state.attempt_number
            if on_failure is not None and is_transient(outcome.exception()):
                on_failure(outcome.exception())
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise AttemptsExhausted(exc.last_attempt.attempt_number, last) from last
    raise AssertionError("unreachable")


# A use case racing another for the same next number or the same new key: tries in all.
CONFLICT_ATTEMPTS = 5
# PostgreSQL's deadlock_detected and serialization_failure: the database rolled this
# transaction back so that another could go on; running it again is the documented cure.
LOST_TO_ANOTHER = frozenset({"40P01", "40001"})


def lost_a_race(exc: BaseException) -> bool:
    """A unique key another transaction took first, or a deadlock this one was chosen to
    break (two transactions locking the same rows in opposite orders, such as a consumer's
    batch and a steward's merge)."""
    return isinstance(exc, IntegrityError) or (
        isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in LOST_TO_ANOTHER)


def rerun_on_conflict(use_case: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """For a use case that reads, then inserts under a unique key, in one unit of work (a
    document's next version number, a route's next version, the first document for an
    external ref, a reconciliation run's results). Two at once read the same state (a key
    not there yet has no row to lock); the later insert breaks the key, and that call runs
    again from the start, its unit of work afresh, on what the other committed. Without it
    the later caller got a 500 (the API fuzz runs found it when two ran side by side).
    A transaction PostgreSQL rolled back to break a deadlock runs again the same way."""
    @functools.wraps(use_case)
    async def rerun(*args, **kwargs) -> T:
        try:  # the usual case without tenacity's ~40 us per call
            return await use_case(*args, **kwargs)
        except DBAPIError as exc:
            if not lost_a_race(exc):
                raise
        retrying = AsyncRetrying(retry=retry_if_exception(lost_a_race),
                                 stop=stop_after_attempt(CONFLICT_ATTEMPTS - 1), wait=wait_random(0, 0.05),
                                 reraise=True)
        async for attempt in retrying:
            with attempt:
                return await use_case(*args, **kwargs)
        raise AssertionError("unreachable")
    return rerun
