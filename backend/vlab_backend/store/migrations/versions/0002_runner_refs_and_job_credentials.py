"""Runner references instead of pids; single-job credentials for remote pipelines.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("benchmarks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runner_ref", sa.String(length=200), nullable=True))
        batch_op.drop_column("pid")
        batch_op.drop_column("pid_started_at")
    op.create_table(
        "job_credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("benchmark_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job_credentials", schema=None) as batch_op:
        batch_op.create_index("ix_job_credentials_benchmark_id", ["benchmark_id"], unique=False)
        batch_op.create_index("ix_job_credentials_token_hash", ["token_hash"], unique=True)


def downgrade() -> None:
    op.drop_table("job_credentials")
    with op.batch_alter_table("benchmarks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pid_started_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch_op.drop_column("runner_ref")
