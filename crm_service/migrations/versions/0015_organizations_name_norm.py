"""organizations: the normalised name the search reads

The search by name compared the typed text with the name by ILIKE. SQLite folds the
case of ASCII letters only, so "рога" did not find "Рога и копыта" there, and `%` or `_`
in the text matched any name. `name_norm` holds the whole name normalised as the
duplicate hints read it (case, ё/е, quotes, punctuation, legal form), and the search
compares the text's words with it. The existing rows get it here, a thousand at a time
in id order; rows written after this come with it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 19:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from crm_service.domain.names import search_form

# revision identifiers, used by Alembic.
revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table('organizations') as batch:
        batch.add_column(sa.Column('name_norm', sa.String(500), nullable=True))
    organizations = sa.table('organizations', sa.column('id', sa.String), sa.column('name', sa.String),
                             sa.column('name_norm', sa.String))
    connection = op.get_bind()
    fill = (sa.update(organizations).where(organizations.c.id == sa.bindparam('row_id'))
            .values(name_norm=sa.bindparam('norm')))
    after = ''
    while True:
        rows = connection.execute(sa.select(organizations.c.id, organizations.c.name)
                                  .where(organizations.c.id > after).order_by(organizations.c.id)
                                  .limit(_BATCH)).all()
        if not rows:
            break
        connection.execute(fill, [{'row_id': row_id, 'norm': search_form(name)} for row_id, name in rows])
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table('organizations') as batch:
        batch.drop_column('name_norm')
