"""an index on every foreign key column that had none

Asking for approval checks that the document has no open request: without an index on
approval_requests.document_id that check read the whole table, once per request (74-100
buffers a request at 2,000 requests, 228 at 6,000, growing with the table;
bench/RESULTS.md). Merging organizations moves approval requests by organization_id;
activities.contact_id is indexed by the same rule (every foreign key column leads an
index, tests/unit/test_small_parts.py).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:20:00

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # CONCURRENTLY (PostgreSQL; SQLite ignores it): a live table keeps taking writes while
    # its index is built. That cannot run in a transaction, so the migrations before this
    # one are committed first. A build that fails leaves an INVALID index behind: drop it
    # (DROP INDEX CONCURRENTLY <name>) and run the upgrade again.
    with op.get_context().autocommit_block():
        op.create_index('ix_approval_requests_document_id', 'approval_requests', ['document_id'], unique=False,
                        postgresql_concurrently=True)
        op.create_index('ix_approval_requests_organization_id', 'approval_requests', ['organization_id'], unique=False,
                        postgresql_concurrently=True)
        op.create_index('ix_activities_contact_id', 'activities', ['contact_id'], unique=False,
                        postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index('ix_activities_contact_id', table_name='activities')
    op.drop_index('ix_approval_requests_organization_id', table_name='approval_requests')
    op.drop_index('ix_approval_requests_document_id', table_name='approval_requests')
