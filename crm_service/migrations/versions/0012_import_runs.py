"""imports: which run owns the job, and when it last made progress

A running import (dry run or apply) is a task in the CRM process that started it. When
that process stops (a deploy's rolling restart, a crash) the job stayed `dry_running` or
`applying` for good and could not be started again. `progress_at` lets any replica see
that a job has stopped moving; `run_id` lets a new run take the job over while a stalled
old one, should it wake up, can no longer write to it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 08:45:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('imports') as batch:
        batch.add_column(sa.Column('run_id', sa.String(36), nullable=True))
        batch.add_column(sa.Column('progress_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('imports') as batch:
        batch.drop_column('progress_at')
        batch.drop_column('run_id')
