"""The transactional outbox: events and their callback deliveries.

Revision ID: 0003
Revises: 0002

New tables only: nothing existing changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("server", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("callback", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("uuid", name="uq_events_uuid"),
        sa.UniqueConstraint("server", "seq", name="uq_events_server_seq"),
    )
    op.create_index("ix_events_user", "events", ["user"])
    op.create_table(
        "deliveries",
        sa.Column("event", sa.Integer, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float),
        sa.Column("abandoned_at", sa.Float),
        sa.Column("last_error", sa.Text),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("event", name="pk_deliveries"),
        sa.ForeignKeyConstraint(
            ["event"], ["events.id"], name="fk_deliveries_event_events", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_deliveries_next_attempt", "deliveries", ["next_attempt"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("events")
