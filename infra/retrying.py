"""Bounded retries for transient failures; permanent ones are never retried."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryError, retry_if_exception, stop_after_attempt, wait_exponential

from schemas.registry import InvalidMessage

T = TypeVar("T")


class PermanentError(Exception):
    """Retrying cannot help (bad data, a 4xx from an API): dead-letter at once."""


def is_transient(exc: BaseException) -> bool:
    return not isinstance(exc, (PermanentError, InvalidMessage))


class AttemptsExhausted(Exception):
    def __init__(self, attempts: int, last: BaseException):
        super().__init__(f"{type(last).__name__}: {last}")
        self.attempts = attempts
        self.last = last


async def call_with_retries(
    fn: Callable[[], Awaitable[T]], *, attempts: int, max_wait: float = 5.0,
    on_failure: Callable[[BaseException], None] | None = None,
) -> tuple[T, int]:
    """Returns (result, attempts used). Raises the permanent error itself, or
    AttemptsExhausted wrapping the last transient one."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=max_wait),
        retry=retry_if_exception(is_transient),
        reraise=False,
    )
    try:
        async for attempt in retrying:
            with attempt:
                result = await fn()
            outcome = attempt.retry_state.outcome
            if not outcome.failed:
                return result, attempt.retry_state.attempt_number
            if on_failure is not None and is_transient(outcome.exception()):
                on_failure(outcome.exception())
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise AttemptsExhausted(exc.last_attempt.attempt_number, last) from last
    raise AssertionError("unreachable")
