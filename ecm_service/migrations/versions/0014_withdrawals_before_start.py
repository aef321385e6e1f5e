"""withdrawals_before_start: a withdrawal that came before its approval's start

A rep's withdrawal reaches the ECM before the approval's start when the start is held up
or dead-lettered, or when a CRM merge moved the request to another partition between the
two events. It was dead-lettered, for the operator to replay after the start; it is now
kept, and the start, when it comes, begins the approval and withdraws it at once.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 21:10:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'withdrawals_before_start',
        sa.Column('system', sa.String(length=32), nullable=False),
        sa.Column('external_id', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('withdrawn_by', sa.String(length=100), nullable=False),
        sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('command_id', sa.String(length=64), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('system', 'external_id'),
    )


def downgrade() -> None:
    op.drop_table('withdrawals_before_start')
