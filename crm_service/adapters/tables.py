from sqlalchemy import JSON, BigInteger, Boolean, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.sql import false

from infra.messaging_tables import inbox_table, outbox_table
from infra.users import users_table
from infra.utc_datetime import UtcDateTime

metadata = MetaData()

users = users_table(metadata)
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(500), nullable=False),
    Column("inn", String(20)),
    Column("kpp", String(20)),
    Column("ogrn", String(20)),
    Column("legal_form", String(100)),
    Column("country", String(2)),
    Column("addresses", JSON, nullable=False, server_default="[]"),
    Column("created_by", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # The responsible manager.
    Column("owner_id", String(36)),
    # What the ECM registry said about this organization (passive, never a question).
    Column("registry_id", String(36)),
    Column("registry_status", String(32)),
    Column("registry_name", String(500)),
    Column("registry_seq", BigInteger().with_variant(Integer, "sqlite")),
    Index("ix_organizations_inn", "inn"),
)

deals = Table(
    "deals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id"), nullable=False, index=True),
    Column("title", String(500), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("owner_id", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

documents = Table(
    "documents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("deal_id", String(36), ForeignKey("deals.id"), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("doc_type", String(64), nullable=False),
    Column("size", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("uploaded_by", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("deal_id", String(36), ForeignKey("deals.id"), nullable=False, index=True),
    Column("document_id", String(36), ForeignKey("documents.id"), nullable=False),
    Column("organization_id", String(36), ForeignKey("organizations.id"), nullable=False),
    Column("requested_by", String(36), nullable=False),
    Column("requested_at", UtcDateTime(), nullable=False),
    Column("status", String(40), nullable=False),
    Column("stage", String(64)),
    Column("reason", Text),
    Column("revision", Integer, nullable=False),
    Column("registry_approval_id", String(36)),
    # The ECM's public summary of the current stage.
    Column("due_at", UtcDateTime()),
    Column("overdue", Boolean, nullable=False, server_default=false()),
    Column("delay_reason_code", String(64)),
    Column("updated_at", UtcDateTime()),
    # The crm.approval_requested event this request was announced with (for tracing).
    Column("request_event_id", String(36)),
)

# Every status the ECM reported for a request, as applied (the trace of its hops).
approval_status_history = Table(
    "approval_status_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("approval_request_id", String(36), ForeignKey("approval_requests.id"), nullable=False, index=True),
    Column("status", String(40), nullable=False),
    Column("stage", String(64)),
    Column("revision", Integer, nullable=False),
    Column("command_id", String(36), nullable=False),
    Column("changed_at", UtcDateTime()),  # when the ECM made the change
    Column("applied_at", UtcDateTime(), nullable=False),
)

# Append-only history of an organization's life cycle (e.g. transfers of responsibility).
organization_history = Table(
    "organization_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("organization_id", String(36), ForeignKey("organizations.id"), nullable=False, index=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("actor_id", String(36), nullable=False),
    Column("detail", JSON, nullable=False),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", String(36), nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("approval_request_id", String(36)),
    Column("text", String(500), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)
