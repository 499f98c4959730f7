"""jobs.reason: why a person asked for a revert, restore or consolidation.

Governance wants every change logged with who and why. Edits always had ``author`` and
``reason``; a revert or restore had only ``requested_by``. The reason is kept on the job and
copied into the version's note, so the history answers "why was this undone" too.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('reason')
