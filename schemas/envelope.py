"""The envelope every message on every topic carries."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: uuid.UUID
    type: str = Field(min_length=1)
    schema_version: int = Field(ge=1)
    occurred_at: datetime
    source: str = Field(min_length=1)
    correlation_id: str = Field(min_length=1, max_length=128)
    causation_id: uuid.UUID | None = None
    payload: dict[str, Any]


def new_envelope(
    *,
    type: str,
    schema_version: int,
    source: str,
    payload: BaseModel,
    correlation_id: str,
    causation_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
) -> Envelope:
    return Envelope(
        event_id=event_id or uuid.uuid4(),
        type=type,
        schema_version=schema_version,
        occurred_at=utcnow(),
        source=source,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload.model_dump(mode="json"),
    )
