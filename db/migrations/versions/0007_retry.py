"""retry: a study whose scoring failed for a cause that passes is scored again

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10

``study.retry_at`` is set when writing a study's outputs failed for a transient cause (the
storage volume full, another I/O error): the study goes back to ``complete`` and is claimed
again once ``retry_at`` has passed (``daemon.worker``), instead of staying ``failed`` for good.
``study.retries`` counts such failures since it was last scored; the wait doubles with it.
``delivery.revived`` marks a dead delivery that was given its one more attempt once its
destination accepted other objects (``daemon.retry``): it is never revived twice. The
new event kinds (``retry``, ``output_failed``, ``cleaned``) need no change: ``event.kind`` is a
VARCHAR(32), not a native enum.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN, not batch mode: on SQLite batch mode re-creates the table, and dropping
    # the old ``study`` would cascade-delete every instance (ON DELETE CASCADE, foreign keys on)
    op.add_column('study', sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('study', sa.Column('retries', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('delivery', sa.Column('revived', sa.Boolean(), nullable=False,
                                        server_default=sa.false()))


def downgrade() -> None:
    op.drop_column('delivery', 'revived')
    op.drop_column('study', 'retries')  # SQLite 3.35+ drops a column in place
    op.drop_column('study', 'retry_at')
