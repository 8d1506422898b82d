"""Users, drives, claims, IP pools, IPs and VLANs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("key_digest", sa.String(64), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("quota_drive_bytes", sa.BigInteger),
        sa.Column("quota_servers", sa.BigInteger),
        sa.Column("quota_cpu", sa.BigInteger),
        sa.Column("quota_mem", sa.BigInteger),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("uuid", name="pk_users"),
        sa.UniqueConstraint("key_digest", name="uq_users_key_digest"),
    )
    op.create_table(
        "drives",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("user", sa.String(36)),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("claim_type", sa.String(16), nullable=False),
        sa.Column("readers", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("imaging", sa.String(16)),
        sa.Column("image_source", sa.String(36)),
        sa.Column("image_gunzip", sa.Boolean, nullable=False),
        sa.Column("read_bytes", sa.BigInteger, nullable=False),
        sa.Column("read_requests", sa.BigInteger, nullable=False),
        sa.Column("write_bytes", sa.BigInteger, nullable=False),
        sa.Column("write_requests", sa.BigInteger, nullable=False),
        sa.Column("media", sa.String(8)),
        sa.Column("format", sa.String(8)),
        sa.Column("rawsize", sa.BigInteger),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("uuid", name="pk_drives"),
        sa.ForeignKeyConstraint(["user"], ["users.uuid"], name="fk_drives_user_users"),
    )
    op.create_index("ix_drives_user", "drives", ["user"])
    op.create_table(
        "claims",
        sa.Column("drive", sa.String(36), nullable=False),
        sa.Column("server", sa.String(36), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("exclusive", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("drive", "server", name="pk_claims"),
        sa.ForeignKeyConstraint(["drive"], ["drives.uuid"], name="fk_claims_drive_drives"),
    )
    op.create_index("ix_claims_server", "claims", ["server"])
    op.create_table(
        "ip_pools",
        sa.Column("cidr", sa.String(64), nullable=False),
        sa.Column("gateway", sa.String(45)),
        sa.Column("nameserver", sa.String(45)),
        sa.PrimaryKeyConstraint("cidr", name="pk_ip_pools"),
    )
    op.create_table(
        "ips",
        sa.Column("address", sa.String(45), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("address", name="pk_ips"),
        sa.ForeignKeyConstraint(["pool"], ["ip_pools.cidr"], name="fk_ips_pool_ip_pools"),
        sa.ForeignKeyConstraint(["user"], ["users.uuid"], name="fk_ips_user_users"),
    )
    op.create_index("ix_ips_pool", "ips", ["pool"])
    op.create_index("ix_ips_user", "ips", ["user"])
    op.create_table(
        "vlans",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("uuid", name="pk_vlans"),
        sa.ForeignKeyConstraint(["user"], ["users.uuid"], name="fk_vlans_user_users"),
    )
    op.create_index("ix_vlans_user", "vlans", ["user"])


def downgrade() -> None:
    for table in ("vlans", "ips", "ip_pools", "claims", "drives", "users"):
        op.drop_table(table)
