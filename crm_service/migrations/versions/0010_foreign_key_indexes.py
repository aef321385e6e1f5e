"""an index on every foreign key column that had none

Asking for approval checks that the document has no open request: without an index on
approval_requests.document_id that check read the whole table, once per request (74-100
buffers a request at 2,000 requests, growing with the table; bench/RESULTS.md). Merging
organizations and contacts updates the other two columns.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:20:00

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_approval_requests_document_id', 'approval_requests', ['document_id'], unique=False)
    op.create_index('ix_approval_requests_organization_id', 'approval_requests', ['organization_id'], unique=False)
    op.create_index('ix_activities_contact_id', 'activities', ['contact_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_activities_contact_id', table_name='activities')
    op.drop_index('ix_approval_requests_organization_id', table_name='approval_requests')
    op.drop_index('ix_approval_requests_document_id', table_name='approval_requests')
