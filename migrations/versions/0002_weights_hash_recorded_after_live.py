"""versions.weights_hash may be NULL for a moment: the worker records it after the version is live.

Hashing the edited weights costs tens of ms on a 100M-parameter model (hundreds on a 7B one), so
the worker no longer holds the new version back from the clients for it: it commits the version,
makes it live, then stores the hash. A NULL left by a crash in between is filled when the writer
next replays that version.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.alter_column('weights_hash', existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE versions SET weights_hash = '' WHERE weights_hash IS NULL")
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.alter_column('weights_hash', existing_type=sa.String(length=64), nullable=False)
