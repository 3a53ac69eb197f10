"""Several API replicas on one database: which replica follows a queued or running benchmark,
until when its claim holds without renewal, and a cancel asked of another replica.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("benchmarks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.create_index("ix_benchmarks_claimed_by", ["claimed_by"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("benchmarks", schema=None) as batch_op:
        batch_op.drop_index("ix_benchmarks_claimed_by")
        batch_op.drop_column("cancel_requested")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("claimed_by")
