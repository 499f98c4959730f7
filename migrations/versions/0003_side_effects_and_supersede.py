"""versions.side_effects (the gate's drift from the base model), edits.supersedes / superseded_by,
and jobs.basis: one revert / restore per state it was accepted against.

The gate now measures every committed state against the base model's answers; the version row
keeps that measurement so that any API process can refuse edits once the side-effect budget is
spent. An edit that replaces a live edit of the same prompt links to it (``supersedes``); the
replaced edit links back (``superseded_by``). Two partial unique indexes on ``jobs`` make the
database refuse a second revert of one edit (or restore to one version) from the same state, so of concurrent
requests exactly one is accepted (``basis``: the state the request was accepted against).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('side_effects', sa.JSON(), nullable=True))
    with op.batch_alter_table('edits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('supersedes', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('superseded_by', sa.Integer(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('basis', sa.Integer(), nullable=True))
    for name, column, kind in (("uq_jobs_revert_once", "edit_id", "revert"),
                               ("uq_jobs_restore_once", "target_version", "restore")):
        where = sa.text(f"kind = '{kind}' AND status != 'failed'")
        op.create_index(name, 'jobs', [column, 'basis'], unique=True, sqlite_where=where, postgresql_where=where)
    where = sa.text("kind = 'consolidate' AND status != 'failed'")
    op.create_index('uq_jobs_consolidate_once', 'jobs', ['basis'], unique=True, sqlite_where=where,
                    postgresql_where=where)


def downgrade() -> None:
    op.drop_index('uq_jobs_consolidate_once', table_name='jobs')
    op.drop_index('uq_jobs_restore_once', table_name='jobs')
    op.drop_index('uq_jobs_revert_once', table_name='jobs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('basis')
    with op.batch_alter_table('edits', schema=None) as batch_op:
        batch_op.drop_column('superseded_by')
        batch_op.drop_column('supersedes')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_column('side_effects')
