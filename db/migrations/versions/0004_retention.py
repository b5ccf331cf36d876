"""retention: when an instance's stored file was deleted

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09

``instance.deleted_at`` is set by the retention job (``daemon.retention``) when it deletes the
file; the row and its path are kept for the record. The new event kinds (``pixel_data_deleted``,
``purged``) need no change: ``event.kind`` is a VARCHAR(32), not a native enum.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_column('deleted_at')
