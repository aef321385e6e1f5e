from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
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
    # Quick entry: everything optional.
    Column("phones", JSON, nullable=False, server_default="[]"),
    Column("emails", JSON, nullable=False, server_default="[]"),
    Column("website", String(300)),
    Column("activity_type", String(200)),
    Column("region", String(200)),
    Column("org_group", String(200)),
    Column("category", String(200)),
    Column("lead_source", String(200)),
    Column("notes", Text),
    # Blocking key for duplicate hints: the longest word of the name without its legal form.
    Column("name_key", String(100)),
    # The whole name normalised (case, ё/е, quotes, punctuation, legal form): what a search
    # by name reads, so that it finds "Рога и копыта" from "рога" on SQLite too.
    Column("name_norm", String(500)),
    Column("merged_into", String(36)),
    Column("updated_at", UtcDateTime()),
    Column("registry_ids", JSON, nullable=False, server_default="{}"),
    Index("ix_organizations_inn", "inn"),
    Index("ix_organizations_name_key", "name_key"),
    Index("ix_organizations_owner_id", "owner_id"),
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
    Column("amount", Numeric(18, 2)),
    Column("currency", String(3)),
    Column("expected_close_date", Date),
    Column("probability", Integer),
    Column("closed_at", UtcDateTime()),
    Index("ix_deals_stage", "stage"),
    Index("ix_deals_owner_id", "owner_id"),  # a rep's approvals in flight (my day)
)

deal_stage_history = Table(
    "deal_stage_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("deal_id", String(36), ForeignKey("deals.id"), nullable=False, index=True),
    Column("from_stage", String(32)),
    Column("to_stage", String(32), nullable=False),
    Column("actor_id", String(36), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id"), index=True),
    Column("full_name", String(300), nullable=False),
    Column("position", String(200)),
    Column("phones", JSON, nullable=False, server_default="[]"),
    Column("emails", JSON, nullable=False, server_default="[]"),
    # [{"label": "birthday", "date": "1980-05-01"}, ...]
    Column("important_dates", JSON, nullable=False, server_default="[]"),
    Column("notes", Text),
    Column("owner_id", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

leads = Table(
    "leads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("title", String(500), nullable=False),
    Column("company_name", String(500)),
    Column("person_name", String(300)),
    Column("phones", JSON, nullable=False, server_default="[]"),
    Column("emails", JSON, nullable=False, server_default="[]"),
    Column("inn", String(20)),
    Column("source", String(200)),
    Column("notes", Text),
    Column("status", String(16), nullable=False),  # open | converted | disqualified
    Column("owner_id", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("converted_at", UtcDateTime()),
    Column("organization_id", String(36)),
    Column("contact_id", String(36)),
    Column("deal_id", String(36)),
)

activities = Table(
    "activities",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),  # call | meeting | email | note | task
    Column("subject", String(500), nullable=False),
    Column("notes", Text),
    Column("organization_id", String(36), ForeignKey("organizations.id"), index=True),
    Column("deal_id", String(36), ForeignKey("deals.id"), index=True),
    Column("contact_id", String(36), ForeignKey("contacts.id"), index=True),
    Column("owner_id", String(36), nullable=False),
    Column("due_at", UtcDateTime()),
    Column("done_at", UtcDateTime()),
    Column("reminded_at", UtcDateTime()),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_activities_owner_due", "owner_id", "due_at"),
)

# Sales teams (a manager transfers ownership within their team) and per-user settings.
user_profiles = Table(
    "user_profiles",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("team", String(100)),
    # Where reminders go besides the CRM: an https:// chat webhook or a mailto: address.
    Column("notify_hook", String(500)),
)

# Spreadsheet imports, run as background jobs (dry run, then apply).
imports = Table(
    "imports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("file_name", String(255), nullable=False),
    Column("file_path", String(500), nullable=False),
    Column("created_by", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("header", JSON, nullable=False),
    Column("mapping", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # uploaded | dry_running | dry_run | applying | applied | failed
    Column("rows_total", Integer),
    Column("rows_done", Integer, nullable=False, server_default="0"),
    Column("counts", JSON, nullable=False, server_default="{}"),
    Column("report_path", String(500)),
    Column("error", Text),
    Column("finished_at", UtcDateTime()),
    Column("run_id", String(36)),  # the run that owns a running job; another run's writes are ignored
    Column("progress_at", UtcDateTime()),  # a running job's last progress: stalled ones are taken over
)

# Stable keys of imported rows (INN+KPP, an external id, or the row's fingerprint):
# importing the same file again updates instead of duplicating.
import_keys = Table(
    "import_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("organization_id", String(36), nullable=False),
)


def _file_columns() -> list[Column]:
    """A stored file: a document's current version and each of its earlier ones."""
    return [
        Column("filename", String(255), nullable=False),
        Column("content_type", String(255), nullable=False),
        Column("size", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("uploaded_by", String(36), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
    ]


documents = Table(
    "documents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("deal_id", String(36), ForeignKey("deals.id"), nullable=False, index=True),
    Column("doc_type", String(64), nullable=False),
    *_file_columns(),
    Column("version_no", Integer, nullable=False, server_default="1"),
)

# The earlier versions of a document (its row in `documents` is the current one); their
# bytes stay in the content store.
document_versions = Table(
    "document_versions",
    metadata,
    Column("document_id", String(36), ForeignKey("documents.id"), primary_key=True),
    Column("version_no", Integer, primary_key=True),
    *_file_columns(),
)

approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("deal_id", String(36), ForeignKey("deals.id"), nullable=False, index=True),
    Column("document_id", String(36), ForeignKey("documents.id"), nullable=False, index=True),
    Column("organization_id", String(36), ForeignKey("organizations.id"), nullable=False, index=True),
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
