"""Signing secrets for callbacks, and the billing ledger.

Revision ID: 0004
Revises: 0003

Every existing user gets a signing secret here, so that code may take one
for granted; new users get theirs when they are created. ``billed`` on
servers and drives starts empty: the ledger reads an empty one as "since
the server started" or "since the drive was created".
"""

from __future__ import annotations

import base64
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("callback_secret", sa.String(64)))
    users = sa.table("users", sa.column("uuid", sa.String), sa.column("callback_secret", sa.String))
    conn = op.get_bind()
    for (uuid,) in conn.execute(sa.select(users.c.uuid)).all():
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        conn.execute(users.update().where(users.c.uuid == uuid).values(callback_secret=secret))
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("billed", sa.Float))
    with op.batch_alter_table("drives") as batch:
        batch.add_column(sa.Column("billed", sa.Float))
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("object", sa.String(36), nullable=False),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("end", sa.Float, nullable=False),
        sa.Column("cpu", sa.Integer),
        sa.Column("mem", sa.Integer),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("recorded", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage"),
    )
    op.create_index("ix_usage_user_end", "usage", ["user", "end"])
    op.create_index("ix_usage_object", "usage", ["object"])


def downgrade() -> None:
    op.drop_table("usage")
    with op.batch_alter_table("drives") as batch:
        batch.drop_column("billed")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("billed")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("callback_secret")
