"""The host registry.

Revision ID: 0005
Revises: 0004

A new table only. Servers already name their host by id (``local`` until
now); no foreign key ties them to this table, as a server's row must
outlive its host's removal long enough to be revived elsewhere.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("cpu", sa.BigInteger, nullable=False),
        sa.Column("mem", sa.BigInteger, nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hosts"),
        sa.UniqueConstraint("url", name="uq_hosts_url"),
    )


def downgrade() -> None:
    op.drop_table("hosts")
