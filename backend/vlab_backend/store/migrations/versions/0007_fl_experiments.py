"""Federated-learning experiments: config, per-round results, global model, and the API
replica that drives each one (claim and lease).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_experiments",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.String(length=2000), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("model_filename", sa.String(length=255), nullable=False),
        sa.Column("global_model_id", sa.Integer(), nullable=True),
        sa.Column("global_model_sha256", sa.String(length=64), nullable=True),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_fl_experiments_owner_id", "fl_experiments", ["owner_id"])
    op.create_index("ix_fl_experiments_status", "fl_experiments", ["status"])


def downgrade() -> None:
    op.drop_index("ix_fl_experiments_status", table_name="fl_experiments")
    op.drop_index("ix_fl_experiments_owner_id", table_name="fl_experiments")
    op.drop_table("fl_experiments")
