"""paper_originals: where each signed paper original of a document is, or who has it

An office keeps the signed prints of a contract: which version was signed, where each
original is filed, who took it out, why and until when. The table holds each original's
present state; its registration, hand-outs and returns go into the document's history.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:40:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'paper_originals',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('document_id', sa.String(length=36), nullable=False),
        sa.Column('version_id', sa.String(length=36), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('location', sa.String(length=300), nullable=False),
        sa.Column('holder_id', sa.String(length=36), nullable=True),
        sa.Column('due_back', sa.Date(), nullable=True),
        sa.Column('purpose', sa.String(length=500), nullable=True),
        sa.Column('handed_out_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('registered_by', sa.String(length=36), nullable=False),
        sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['document_id'], ['documents.id']),
        sa.ForeignKeyConstraint(['version_id'], ['document_versions.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('document_id', 'number', name='uq_paper_originals_number'),
    )
    # CONCURRENTLY as every index since 0010 (the table is new and empty: instant either way).
    with op.get_context().autocommit_block():
        op.create_index('ix_paper_originals_version_id', 'paper_originals', ['version_id'], unique=False,
                        postgresql_concurrently=True)
        op.create_index('ix_paper_originals_state_holder', 'paper_originals', ['state', 'holder_id'], unique=False,
                        postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index('ix_paper_originals_state_holder', table_name='paper_originals')
    op.drop_index('ix_paper_originals_version_id', table_name='paper_originals')
    op.drop_table('paper_originals')
