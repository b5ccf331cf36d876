"""urgency: studies scored ahead of the others

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``study.urgent`` is set at arrival when the sender marks the study urgent (``urgency:`` in the
config: a C-STORE with Priority HIGH, a Requested Procedure Priority such as STAT, or a
calling AE title listed as urgent); ``study.urgent_reason`` says which. Urgent studies are
claimed and batched first, with ageing so the others never starve (``inference.engine``).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN, not batch mode: on SQLite batch mode re-creates the table, and dropping
    # the old ``study`` would cascade-delete every instance (ON DELETE CASCADE, foreign keys on)
    op.add_column('study', sa.Column('urgent', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('study', sa.Column('urgent_reason', sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column('study', 'urgent_reason')  # SQLite 3.35+ drops a column in place
    op.drop_column('study', 'urgent')
