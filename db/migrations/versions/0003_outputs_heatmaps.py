"""heatmaps and peak regions of scored views; the objects a result produced; a delivery per object

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('image_score', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heatmap', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('heatmap_method', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('geometry', sa.Text(), nullable=True))
        for name in ('peak_x0', 'peak_y0', 'peak_x1', 'peak_y1'):
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
    op.create_table(
        'output_object',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('result_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=True),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('detail', sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(['result_id'], ['study_result.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('uid'),
    )
    op.create_index('ix_output_object_result_id', 'output_object', ['result_id'])
    # existing results: their SR is their one output
    op.execute(
        "INSERT INTO output_object (result_id, kind, uid, series_instance_uid, path) "
        "SELECT id, 'SR', sr_sop_instance_uid, sr_series_instance_uid, sr_path FROM study_result "
        "WHERE sr_sop_instance_uid IS NOT NULL AND sr_path IS NOT NULL")
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_constraint('uq_delivery_object', type_='unique')
        batch_op.create_unique_constraint('uq_delivery_object',
                                          ['result_id', 'destination', 'sop_instance_uid'])


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_constraint('uq_delivery_object', type_='unique')
        batch_op.create_unique_constraint('uq_delivery_object',
                                          ['result_id', 'destination', 'object_kind'])
    op.drop_index('ix_output_object_result_id', table_name='output_object')
    op.drop_table('output_object')
    with op.batch_alter_table('image_score', schema=None) as batch_op:
        for name in ('peak_y1', 'peak_x1', 'peak_y0', 'peak_x0', 'geometry', 'heatmap_method',
                     'heatmap'):
            batch_op.drop_column(name)
