"""Hosts declare their target instances: the instance's host and state, the host's role,
node state, target configuration and host-scoped credential.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), nullable=False,
                                      server_default="targets"))
        batch_op.add_column(sa.Column("state", sa.String(length=32), nullable=False,
                                      server_default="ready"))
        batch_op.add_column(sa.Column("target_config", sa.JSON(), nullable=False,
                                      server_default="{}"))
        batch_op.add_column(sa.Column("credential_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint("uq_hosts_credential_hash", ["credential_hash"])
    # Before roles, a host that was not minimal ran the services ("full").
    op.execute(sa.text("UPDATE hosts SET role = 'services' WHERE minimal = :no")
               .bindparams(no=False))
    with op.batch_alter_table("target_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("state", sa.String(length=32), nullable=False,
                                      server_default="ready"))
        batch_op.create_index("ix_target_instances_host_id", ["host_id"], unique=False)
        batch_op.create_foreign_key("fk_target_instances_host_id_hosts", "hosts",
                                    ["host_id"], ["id"], ondelete="SET NULL")
    op.execute(sa.text("UPDATE target_instances SET state = 'detached' WHERE enabled = :no")
               .bindparams(no=False))


def downgrade() -> None:
    with op.batch_alter_table("target_instances", schema=None) as batch_op:
        batch_op.drop_constraint("fk_target_instances_host_id_hosts", type_="foreignkey")
        batch_op.drop_index("ix_target_instances_host_id")
        batch_op.drop_column("state")
        batch_op.drop_column("host_id")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_hosts_credential_hash", type_="unique")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("credential_hash")
        batch_op.drop_column("target_config")
        batch_op.drop_column("state")
        batch_op.drop_column("role")
