"""an index on every foreign key column that had none

Approvals waiting for a counterparty are found, and moved on merges, by counterparty_id;
an approval's notifications by approval_id; a reconciliation run's snapshots by run_id.
Without these each such lookup read the whole table.

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
        op.create_index('ix_approvals_document_version_id', 'approvals', ['document_version_id'], unique=False,
                        postgresql_concurrently=True)
        op.create_index('ix_approvals_counterparty_id', 'approvals', ['counterparty_id'], unique=False,
                        postgresql_concurrently=True)
        op.create_index('ix_notifications_approval_id', 'notifications', ['approval_id'], unique=False,
                        postgresql_concurrently=True)
        op.create_index('ix_report_snapshots_run_id', 'report_snapshots', ['run_id'], unique=False,
                        postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index('ix_report_snapshots_run_id', table_name='report_snapshots')
    op.drop_index('ix_notifications_approval_id', table_name='notifications')
    op.drop_index('ix_approvals_counterparty_id', table_name='approvals')
    op.drop_index('ix_approvals_document_version_id', table_name='approvals')
