"""external_ref_merges: another system's merges, remembered

A CRM merge of A into B, then of B into C, reaches the ECM as two commands keyed by their
merged organizations, on different partitions: after a backlog they can arrive in either
order. Each merge is remembered so that one into a reference merged away already goes on
to the last survivor.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 12:40:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'external_ref_merges',
        sa.Column('entity_type', sa.String(length=32), nullable=False),
        sa.Column('system', sa.String(length=32), nullable=False),
        sa.Column('merged_id', sa.String(length=64), nullable=False),
        sa.Column('survivor_id', sa.String(length=64), nullable=False),
        sa.Column('merged_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('entity_type', 'system', 'merged_id'),
    )


def downgrade() -> None:
    op.drop_table('external_ref_merges')
