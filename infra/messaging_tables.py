"""The outbox and inbox tables every service owns in its own database."""

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, MetaData, String, Table, Text

from infra.utc_datetime import UtcDateTime


def outbox_table(metadata: MetaData) -> Table:
    # The state change and its event row commit in one transaction; the relay publishes.
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("topic", String(200), nullable=False),
        Column("message_key", String(200), nullable=False),
        Column("message_type", String(100), nullable=False),
        Column("correlation_id", String(128), nullable=False),
        Column("body", Text, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("published_at", UtcDateTime(), nullable=True),
        Index("ix_outbox_unpublished", "published_at", "id"),
    )


def inbox_table(metadata: MetaData) -> Table:
    # Ids of applied messages, written in the same transaction as the effect; deleted by
    # applied_at after their retention (infra.messaging_retention).
    return Table(
        "inbox",
        metadata,
        Column("message_id", String(36), primary_key=True),
        Column("message_type", String(100), nullable=False),
        Column("topic", String(200), nullable=False),
        Column("applied_at", UtcDateTime(), nullable=False),
        Column("detail", JSON, nullable=True),
        Index("ix_inbox_applied_at", "applied_at"),
    )
