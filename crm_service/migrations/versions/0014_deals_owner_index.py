"""an index on deals.owner_id, for a rep's approvals in flight

"My day" lists the approval requests of the deals a rep owns that are still open; without
this index every page view read the whole deals table.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 08:20:00

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # CONCURRENTLY on PostgreSQL (SQLite ignores it): sales keep working while it is built.
    # A build that fails leaves an INVALID index behind: drop it (DROP INDEX CONCURRENTLY
    # ix_deals_owner_id) and run the upgrade again.
    with op.get_context().autocommit_block():
        op.create_index('ix_deals_owner_id', 'deals', ['owner_id'], unique=False, postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index('ix_deals_owner_id', table_name='deals')
