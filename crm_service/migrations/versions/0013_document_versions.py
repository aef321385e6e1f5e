"""documents: versions

A document returned for changes gets a new file. The documents row holds the current
version (its number in `version_no`); `document_versions` keeps the earlier ones, whose
bytes stay in the content store, so an event naming an earlier hash can still be served.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 14:40:00

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
    with op.batch_alter_table('documents') as batch:
        batch.add_column(sa.Column('version_no', sa.Integer(), nullable=False, server_default='1'))
    op.create_table(
        'document_versions',
        sa.Column('document_id', sa.String(36), sa.ForeignKey('documents.id'), nullable=False),
        sa.Column('version_no', sa.Integer(), nullable=False),
        sa.Column('filename', sa.String(255), nullable=False),
        sa.Column('content_type', sa.String(255), nullable=False),
        sa.Column('size', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('sha256', sa.String(64), nullable=False),
        sa.Column('uploaded_by', sa.String(36), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('document_id', 'version_no'),
    )


def downgrade() -> None:
    op.drop_table('document_versions')
    with op.batch_alter_table('documents') as batch:
        batch.drop_column('version_no')
