"""counterparties: a trigram index of the normalised name, for search on PostgreSQL

Registry search (`/api/counterparties?q=`, the registry page) and the steward's look for
a pending record's look-alikes compare words with any part of the normalised name
(`LIKE '%word%'`), which no B-tree index serves: each read the whole registry, and the
steward's queue did so once per record shown. pg_trgm's GIN index serves those patterns
(infra.search_index, docs/adr/0023). PostgreSQL only; SQLite keeps reading the table.

The extension ships with PostgreSQL (contrib) and is trusted: the database's owner may
create it. The index is built CONCURRENTLY: the consumers keep writing records
meanwhile. A build that fails leaves an INVALID index behind: drop it
(DROP INDEX CONCURRENTLY ix_counterparties_normalized_name_trgm) and run the upgrade
again. The downgrade drops the index and leaves the extension, which other objects of
the database may use.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 23:30:00

"""
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    with op.get_context().autocommit_block():
        op.create_index('ix_counterparties_normalized_name_trgm', 'counterparties', ['normalized_name'],
                        unique=False, postgresql_using='gin',
                        postgresql_ops={'normalized_name': 'gin_trgm_ops'}, postgresql_concurrently=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    with op.get_context().autocommit_block():
        op.drop_index('ix_counterparties_normalized_name_trgm', table_name='counterparties',
                      postgresql_concurrently=True)
