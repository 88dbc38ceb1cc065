"""index metric and collection

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 21:30:00.000000

`metric`: cosine, ip or l2 (NULL = cosine, what every index built before was).
`collection`: the Milvus collection holding the vectors (NULL = the model's
default name); a rebuild fills a new collection and switches this column.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metric', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('collection', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.drop_column('collection')
        batch_op.drop_column('metric')
