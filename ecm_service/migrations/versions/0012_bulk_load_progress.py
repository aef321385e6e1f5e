"""bulk_loads: when a load last made progress

A bulk load is a task in the ECM process that took the upload. When that process stops (a
deploy's rolling restart, a crash) the load stayed `running` for good, its figures frozen.
`progress_at` lets any replica see that it has stopped moving and report it interrupted.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 10:20:00

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
    with op.batch_alter_table('bulk_loads') as batch:
        batch.add_column(sa.Column('progress_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bulk_loads') as batch:
        batch.drop_column('progress_at')
