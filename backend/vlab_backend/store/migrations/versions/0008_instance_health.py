"""Health checks per target instance: the instance's health and its evidence, and the checks
(reference benchmarks) with their samples, median and verdict.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("target_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("health", sa.String(length=16), nullable=False,
                                      server_default="unknown"))
        batch_op.add_column(sa.Column("health_detail", sa.JSON(), nullable=False,
                                      server_default="{}"))
    op.create_table(
        "health_checks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("instance_uid", sa.String(length=200), nullable=False),
        sa.Column("benchmark_id", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("rebaseline", sa.Boolean(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("median_s", sa.Float(), nullable=True),
        sa.Column("samples", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_health_checks_instance_uid", "health_checks", ["instance_uid"])
    op.create_index("ix_health_checks_benchmark_id", "health_checks", ["benchmark_id"])
    op.create_index("ix_health_checks_verdict", "health_checks", ["verdict"])


def downgrade() -> None:
    op.drop_index("ix_health_checks_verdict", table_name="health_checks")
    op.drop_index("ix_health_checks_benchmark_id", table_name="health_checks")
    op.drop_index("ix_health_checks_instance_uid", table_name="health_checks")
    op.drop_table("health_checks")
    with op.batch_alter_table("target_instances", schema=None) as batch_op:
        batch_op.drop_column("health_detail")
        batch_op.drop_column("health")
