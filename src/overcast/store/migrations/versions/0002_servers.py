"""Servers and their NICs; a claim now names its server by foreign key.

Revision ID: 0002
Revises: 0001

Before this revision no server could exist, so no claim can name one that
is missing: the new foreign key on ``claims.server`` holds for any data
0001 allowed (and :func:`overcast.store.engine.migrate` checks it on SQLite
before committing). SQLite cannot add a constraint to a table: the batch
operation copies ``claims`` into a new table with it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("persistent", sa.Boolean, nullable=False),
        sa.Column("cpu", sa.Integer, nullable=False),
        sa.Column("mem", sa.Integer, nullable=False),
        sa.Column("smp", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("vnc_ip", sa.String(45)),
        sa.Column("vnc_port", sa.Integer),
        sa.Column("started", sa.Float),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("uuid", name="pk_servers"),
        sa.ForeignKeyConstraint(["user"], ["users.uuid"], name="fk_servers_user_users"),
        sa.UniqueConstraint("host", "vnc_port", name="uq_servers_host_vnc_port"),
    )
    op.create_index("ix_servers_user", "servers", ["user"])
    op.create_table(
        "nics",
        sa.Column("server", sa.String(36), nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("model", sa.String(16), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("vlan", sa.String(36)),
        sa.Column("network", sa.String(36), nullable=False),
        sa.Column("ip", sa.String(45)),
        sa.PrimaryKeyConstraint("server", "slot", name="pk_nics"),
        sa.ForeignKeyConstraint(
            ["server"], ["servers.uuid"], name="fk_nics_server_servers", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["vlan"], ["vlans.uuid"], name="fk_nics_vlan_vlans"),
        sa.UniqueConstraint("network", "mac", name="uq_nics_network_mac"),
        sa.UniqueConstraint("ip", name="uq_nics_ip"),
        sa.CheckConstraint("network = COALESCE(vlan, '')", name="ck_nics_network"),
    )
    with op.batch_alter_table("claims") as batch:
        batch.create_foreign_key(
            "fk_claims_server_servers", "servers", ["server"], ["uuid"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("claims") as batch:
        batch.drop_constraint("fk_claims_server_servers", type_="foreignkey")
    op.drop_table("nics")
    op.drop_table("servers")
