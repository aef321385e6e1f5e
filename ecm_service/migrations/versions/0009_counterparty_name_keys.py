"""name keys for matching: one row per blocking key of each live counterparty, and the
stored match name, replacing the single match_key column

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 18:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('counterparty_name_keys',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('counterparty_id', sa.String(length=36), nullable=False),
    sa.PrimaryKeyConstraint('key', 'counterparty_id')
    )
    op.create_index('ix_counterparty_name_keys_counterparty_id', 'counterparty_name_keys', ['counterparty_id'],
                    unique=False)
    with op.batch_alter_table('counterparties') as batch:
        batch.drop_index('ix_counterparties_match_key')
        batch.drop_column('match_key')
        batch.add_column(sa.Column('match_name', sa.String(length=500), nullable=True))
    _backfill()


def _backfill() -> None:
    """Every record's match name, and the keys of the live ones, computed in Python
    (transliteration)."""
    from ecm_service.domain.matching import match_name, name_keys

    bind = op.get_bind()
    t = sa.table('counterparties', sa.column('id', sa.String), sa.column('name', sa.String),
                 sa.column('status', sa.String), sa.column('match_name', sa.String))
    k = sa.table('counterparty_name_keys', sa.column('key', sa.String), sa.column('counterparty_id', sa.String))
    rows = bind.execute(sa.select(t.c.id, t.c.name, t.c.status)).all()
    for start in range(0, len(rows), 5000):
        chunk = rows[start:start + 5000]
        bind.execute(sa.update(t).where(t.c.id == sa.bindparam('b_id')).values(match_name=sa.bindparam('m')),
                     [{'b_id': i, 'm': match_name(n or '')} for i, n, _ in chunk])
        keys = [{'key': key, 'counterparty_id': i} for i, n, status in chunk
                if status in ('verified', 'pending_verification') for key in name_keys(n or '')]
        if keys:
            bind.execute(k.insert(), keys)


def downgrade() -> None:
    """Downgrade schema: the old column comes back empty (0007's backfill is not repeated)."""
    with op.batch_alter_table('counterparties') as batch:
        batch.drop_column('match_name')
        batch.add_column(sa.Column('match_key', sa.String(length=100), nullable=True))
        batch.create_index('ix_counterparties_match_key', ['match_key'], unique=False)
    op.drop_index('ix_counterparty_name_keys_counterparty_id', table_name='counterparty_name_keys')
    op.drop_table('counterparty_name_keys')
