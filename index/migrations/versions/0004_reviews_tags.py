"""reviews and tags

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:00:00.000000

`reviews`: an analyst's mark on a scan result (defect, false_alarm, missed), who and when.
`tags`: free-text tags on catalog images.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'reviews',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('result_id', sa.Integer(), nullable=False),
        sa.Column('scan_id', sa.Integer(), nullable=False),
        sa.Column('mark', sa.String(length=16), nullable=False),
        sa.Column('reviewer', sa.String(length=255), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['result_id'], ['scan_results.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_reviews_result_id', 'reviews', ['result_id'], unique=True)
    op.create_index('ix_reviews_scan_id', 'reviews', ['scan_id'], unique=False)
    op.create_table(
        'tags',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('image_id', sa.Integer(), nullable=False),
        sa.Column('tag', sa.String(length=255), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('image_id', 'tag', name='uq_image_tag'),
    )
    op.create_index('ix_tags_image_id', 'tags', ['image_id'], unique=False)
    op.create_index('ix_tags_tag', 'tags', ['tag'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_tags_tag', table_name='tags')
    op.drop_index('ix_tags_image_id', table_name='tags')
    op.drop_table('tags')
    op.drop_index('ix_reviews_scan_id', table_name='reviews')
    op.drop_index('ix_reviews_result_id', table_name='reviews')
    op.drop_table('reviews')
