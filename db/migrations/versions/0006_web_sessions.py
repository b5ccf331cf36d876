"""web sessions: a dashboard login is a row, so logging out ends it on every node

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

``web_session`` holds one row per open dashboard session, named by the SHA-256 digest of the
id its signed cookie carries (``web.sessions``). Logging out deletes the row; expired rows are
deleted at each login. Cookies issued before this revision carry no id and are refused: users
log in again once after the upgrade.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'web_session',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_web_session_expires_at'), 'web_session', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_web_session_expires_at'), table_name='web_session')
    op.drop_table('web_session')
