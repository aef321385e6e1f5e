"""an index on inbox.applied_at, for pruning

Inbox marks older than the inbox's retention are deleted oldest first
(infra.messaging_retention); without this index every pruning batch would read the whole
inbox. Published outbox rows are pruned through ix_outbox_unpublished (published_at, id).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 22:00:00

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # CONCURRENTLY on PostgreSQL (SQLite ignores it): the consumers keep writing marks
    # while the index is built. A build that fails leaves an INVALID index behind: drop it
    # (DROP INDEX CONCURRENTLY ix_inbox_applied_at) and run the upgrade again.
    with op.get_context().autocommit_block():
        op.create_index('ix_inbox_applied_at', 'inbox', ['applied_at'], unique=False, postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index('ix_inbox_applied_at', table_name='inbox')
