from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.sql import false

from infra.messaging_tables import inbox_table, outbox_table
from infra.search_index import trigram_index
from infra.users import users_table
from infra.utc_datetime import UtcDateTime

metadata = MetaData()

users = users_table(metadata)
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

counterparties = Table(
    "counterparties",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(500), nullable=False),
    Column("status", String(32), nullable=False),
    Column("inn", String(20)),
    Column("kpp", String(20)),
    Column("ogrn", String(20)),
    Column("legal_form", String(100)),
    Column("country", String(2)),
    Column("quality_flags", JSON, nullable=False),
    Column("addresses", JSON, nullable=False, server_default="[]"),
    Column("short_name", String(300)),
    Column("vat", String(20)),
    Column("normalized_name", String(500)),
    Column("merged_into", String(36)),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # The name as matching compares it (`domain.matching.match_name`), kept with the record.
    Column("match_name", String(500)),
    Index("ix_counterparties_inn", "inn"),
    Index("ix_counterparties_ogrn", "ogrn"),
    Index("ix_counterparties_normalized_name", "normalized_name"),
    Index("ix_counterparties_status", "status"),
    # Registry search and the steward's look-alikes find a word anywhere in the name
    # (`LIKE '%word%'`): served by trigrams on PostgreSQL (infra.search_index).
    trigram_index("ix_counterparties_normalized_name_trgm", "normalized_name"),
)

# Blocking keys for matching (`domain.matching.name_keys`): one row per key of each live
# (verified or pending) record; merged, rejected and archived records have none.
counterparty_name_keys = Table(
    "counterparty_name_keys",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("counterparty_id", String(36), primary_key=True),
    Index("ix_counterparty_name_keys_counterparty_id", "counterparty_id"),
)

# What match-or-propose answered for a record that arrived by sync, with its evidence,
# and what the steward later made of it (quality telemetry).
match_decisions = Table(
    "match_decisions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("counterparty_id", String(36), nullable=False, index=True),  # the record the ref landed on
    Column("source_ref", String(100), nullable=False),
    Column("outcome", String(16), nullable=False),  # link | propose | new
    Column("rule", String(64), nullable=False),
    Column("candidates", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # confirmed | overturned, by which steward action, when
    Column("review", String(16)),
    Column("review_action", String(32)),
    Column("reviewed_at", UtcDateTime()),
)

# Pairs the steward declared distinct (e.g. branches sharing an INN): never proposed again.
not_duplicates = Table(
    "not_duplicates",
    metadata,
    Column("first_id", String(36), primary_key=True),
    Column("second_id", String(36), primary_key=True),
    Column("decided_by", String(36), nullable=False),
    Column("reason", Text, nullable=False),
    Column("decided_at", UtcDateTime(), nullable=False),
)

# Append-only, hash-chained history of every change to registry records, documents and
# approvals. Each entry carries the hash of the previous one; nothing updates or deletes.
history = Table(
    "history",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("entity_type", String(32), nullable=False),
    Column("entity_id", String(36), nullable=False),
    Column("action", String(64), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("reason", Text),
    Column("data", JSON, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Index("ix_history_entity", "entity_type", "entity_id"),
)

# Opaque references to records in other systems ("crm:<id>"); one owner per reference.
external_refs = Table(
    "external_refs",
    metadata,
    Column("entity_type", String(32), primary_key=True),
    Column("system", String(32), primary_key=True),
    Column("external_id", String(64), primary_key=True),
    Column("entity_id", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_external_refs_entity", "entity_type", "entity_id"),
)

# Withdrawals that arrived before their approval's start: the start was held up or
# dead-lettered, or a CRM merge moved the request to another partition between the two
# events. The start, when it comes, begins the approval and withdraws it at once.
withdrawals_before_start = Table(
    "withdrawals_before_start",
    metadata,
    Column("system", String(32), primary_key=True),
    Column("external_id", String(64), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("withdrawn_by", String(100), nullable=False),
    Column("withdrawn_at", UtcDateTime(), nullable=False),
    Column("command_id", String(64), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
)

# Another system's merges of its records (a CRM merge of two organizations): the merged
# reference and the last one it lives on now. Merges of a chain (A into B, then B into C)
# can arrive in either order; one into a reference merged away already goes on to where
# that one went.
external_ref_merges = Table(
    "external_ref_merges",
    metadata,
    Column("entity_type", String(32), primary_key=True),
    Column("system", String(32), primary_key=True),
    Column("merged_id", String(64), primary_key=True),
    Column("survivor_id", String(64), nullable=False),
    Column("merged_at", UtcDateTime(), nullable=False),
)

documents = Table(
    "documents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("doc_type", String(64), nullable=False),
    Column("title", String(500), nullable=False),
    Column("owner_id", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("retain_until", UtcDateTime()),
    Column("legal_hold", Boolean, nullable=False, server_default=false()),
    Column("legal_hold_reason", Text),
    Column("disposed_at", UtcDateTime()),
)

document_versions = Table(
    "document_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("document_id", String(36), ForeignKey("documents.id"), nullable=False),
    Column("version_no", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("created_by", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("document_id", "version_no", name="uq_document_versions_no"),
)

# The paper originals of a document: the signed prints an office keeps, each numbered
# within its document, of the version that was signed. Where each is kept, or who has it
# and until when; every registration, hand-out and return is in the document's history.
paper_originals = Table(
    "paper_originals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("document_id", String(36), ForeignKey("documents.id"), nullable=False),
    Column("version_id", String(36), ForeignKey("document_versions.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # in_place | handed_out
    Column("location", String(300), nullable=False),  # where it is kept (and goes back to)
    Column("holder_id", String(36)),  # the ECM user who has it while handed out
    Column("due_back", Date),
    Column("purpose", String(500)),
    Column("handed_out_at", UtcDateTime()),
    Column("registered_by", String(36), nullable=False),
    Column("registered_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("document_id", "number", name="uq_paper_originals_number"),
    Index("ix_paper_originals_version_id", "version_id"),
    Index("ix_paper_originals_state_holder", "state", "holder_id"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("document_id", String(36), ForeignKey("documents.id"), nullable=False),
    Column("document_version_id", String(36), ForeignKey("document_versions.id"), nullable=False, index=True),
    Column("document_sha256", String(64), nullable=False),
    Column("doc_type", String(64), nullable=False),
    Column("title", String(500), nullable=False),
    Column("route_doc_type", String(64), nullable=False),
    Column("route_version", Integer, nullable=False),
    Column("initiator_ref", String(100), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("counterparty_id", String(36), ForeignKey("counterparties.id"), index=True),
    Column("counterparty_ref", String(100)),
    Column("status", String(40), nullable=False),
    Column("current_stage_no", Integer),
    Column("revision", Integer, nullable=False),
    Column("reason", Text),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # Each new document version starts a new round of decisions.
    Column("round", Integer, nullable=False, server_default="1"),
    Column("reopen_policy", String(16), nullable=False, server_default="all"),
    Column("needs_verified_counterparty", Boolean, nullable=False, server_default=false()),
    Index("ix_approvals_status", "status"),
    Index("ix_approvals_document_id", "document_id"),
)

approval_steps = Table(
    "approval_steps",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("approval_id", String(36), ForeignKey("approvals.id"), nullable=False, index=True),
    Column("stage_no", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    Column("role", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("decided_by", String(36)),
    Column("decided_at", UtcDateTime()),
    Column("comment", Text),
    # The stage as the route version defined it when the approval started.
    Column("assignees", JSON, nullable=False, server_default="[]"),
    Column("quorum", Integer, nullable=False, server_default="1"),
    Column("deadline_hours", Float),
    Column("remind_before_hours", Float),
    Column("escalation_role", String(32)),
    Column("due_at", UtcDateTime()),
    Column("reminded_at", UtcDateTime()),
    Column("escalated_at", UtcDateTime()),
    Column("delay_reason_code", String(64)),
)

# One place per assignee per stage per round; who filled it, for whom, on which hash.
approval_assignments = Table(
    "approval_assignments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("approval_id", String(36), ForeignKey("approvals.id"), nullable=False, index=True),
    Column("stage_no", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("assignee_role", String(32)),
    Column("assignee_user", String(200)),
    Column("status", String(16), nullable=False),
    Column("decided_by", String(36)),
    Column("decided_by_name", String(200)),
    Column("on_behalf_of", String(200)),
    Column("via_escalation", Boolean, nullable=False, server_default=false()),
    Column("decided_at", UtcDateTime()),
    Column("comment", Text),
    Column("sha256", String(64)),
    Index("ix_approval_assignments_open", "status", "assignee_role"),
)

# Every version of every route; approvals point at (doc_type, version).
route_versions = Table(
    "route_versions",
    metadata,
    Column("doc_type", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("source", String(16), nullable=False),  # file | api
    Column("created_by", String(100), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# A user names a deputy for a date range; the deputy decides on their behalf.
deputies = Table(
    "deputies",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), nullable=False, index=True),
    Column("deputy_id", String(36), nullable=False, index=True),
    Column("starts_on", Date, nullable=False),
    Column("ends_on", Date, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime()),
)

# Why a stage is late, in the assignee's words and a code from the configured list.
delay_reasons = Table(
    "delay_reasons",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("approval_id", String(36), ForeignKey("approvals.id"), nullable=False, index=True),
    Column("stage_no", Integer, nullable=False),
    Column("stage_name", String(64), nullable=False),
    Column("role", String(100), nullable=False),
    Column("doc_type", String(64), nullable=False),
    Column("code", String(64), nullable=False),
    Column("text", Text),
    Column("recorded_by", String(36), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
)

# Reminders and escalations for ECM staff (inbox and API), addressed to a role or a user.
notifications = Table(
    "notifications",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),  # reminder | escalation | withdrawn
    Column("approval_id", String(36), ForeignKey("approvals.id"), nullable=False, index=True),
    Column("stage_no", Integer, nullable=False),
    Column("to_role", String(32)),
    Column("to_user", String(200)),
    Column("text", String(500), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_notifications_to_role", "to_role"),
)

# Bulk loads of counterparties from accounting systems, run as background jobs.
bulk_loads = Table(
    "bulk_loads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("file_name", String(255), nullable=False),
    Column("system", String(32), nullable=False),
    Column("created_by", String(36), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime()),
    Column("rows_done", Integer, nullable=False, server_default="0"),
    Column("counts", JSON, nullable=False),
    Column("report_path", String(500)),
    Column("error", Text),
    Column("progress_at", UtcDateTime()),  # a running load's last progress: a quiet one was interrupted
)

# Initial sync / reconciliation of another system's organizations against the registry.
reconciliation_runs = Table(
    "reconciliation_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("system", String(32), nullable=False),
    Column("mode", String(16), nullable=False),  # dry_run | apply
    Column("status", String(16), nullable=False),  # running | done
    Column("started_by", String(36), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime()),
    Column("done", Integer, nullable=False, server_default="0"),
    # The last organization id handled: a resumed run continues after it.
    Column("cursor", String(64)),
    Column("counts", JSON, nullable=False, server_default="{}"),
)

reconciliation_results = Table(
    "reconciliation_results",
    metadata,
    Column("run_id", String(36), ForeignKey("reconciliation_runs.id"), primary_key=True),
    Column("external_id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("counterparty_id", String(36)),
    Column("score", Float),
    Column("evidence", JSON, nullable=False),
    # What the other system said about the organization at the time (name and ids only).
    Column("snapshot", JSON, nullable=False),
    Index("ix_reconciliation_results_state", "run_id", "state"),
)

# Stored copies of the auditors' report; the sha256 proves later what it said.
report_snapshots = Table(
    "report_snapshots",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("run_id", String(36), ForeignKey("reconciliation_runs.id"), nullable=False, index=True),
    Column("sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("created_by", String(36), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)
