"""Dead letters keep the original key, value and headers, plus the error context."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

from infra.logs import error_text
from schemas.topics import dead_letter_topic

ERROR_HEADER_PREFIX = "dlq."
MAX_ERROR_TEXT = 2000
# A dead letter must itself fit in a produce request (1,000,000 bytes by default in every
# client here): a larger value is kept as its first KEPT_WHEN_TOO_LARGE bytes, with its
# size and sha256, and cannot be replayed.
MAX_DEAD_LETTER_VALUE = 900_000
KEPT_WHEN_TOO_LARGE = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def build_dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | tuple | None,
    error: BaseException,
    attempts: int,
    consumer: str,
) -> DeadLetter:
    original = [(k, v) for k, v in (headers or ()) if not k.startswith(ERROR_HEADER_PREFIX)]
    context = {
        "source.topic": source_topic,
        "source.partition": str(partition),
        "source.offset": str(offset),
        "error.class": type(error).__name__,
        "error.message": error_text(error, MAX_ERROR_TEXT),
        "attempts": str(attempts),
        "consumer": consumer,
        "failed_at": datetime.now(timezone.utc).isoformat(),
    }
    if value is not None and len(value) > MAX_DEAD_LETTER_VALUE:
        context.update({"value.truncated": "true", "value.bytes": str(len(value)),
                        "value.sha256": hashlib.sha256(value).hexdigest()})
        value = value[:KEPT_WHEN_TOO_LARGE]
    error_headers = [(ERROR_HEADER_PREFIX + k, v.encode()) for k, v in context.items()]
    return DeadLetter(dead_letter_topic(source_topic), key, value, original + error_headers)


def is_truncated(headers) -> bool:
    return error_context(headers).get("value.truncated") == "true"


def error_context(headers) -> dict[str, str]:
    return {
        k[len(ERROR_HEADER_PREFIX):]: v.decode(errors="replace")
        for k, v in (headers or ())
        if k.startswith(ERROR_HEADER_PREFIX)
    }
