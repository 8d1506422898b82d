"""The SQL schema (SQLAlchemy Core). Alembic migrations create it.

Space-separated lists (``readers``, ``tags``) are stored as the text the API
shows; free ``user:*`` metadata is a JSON object.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["claims", "drives", "ip_pools", "ips", "metadata", "users", "vlans"]

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("key_digest", sa.String(64), nullable=False, unique=True),
    sa.Column("admin", sa.Boolean, nullable=False, default=False),
    sa.Column("quota_drive_bytes", sa.BigInteger),
    # The API accepts quotas up to 2**40: wider than PostgreSQL's INTEGER.
    sa.Column("quota_servers", sa.BigInteger),
    sa.Column("quota_cpu", sa.BigInteger),
    sa.Column("quota_mem", sa.BigInteger),
    sa.Column("created", sa.Float, nullable=False),
)

drives = sa.Table(
    "drives",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("user", sa.String(36), sa.ForeignKey("users.uuid"), index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("claim_type", sa.String(16), nullable=False),
    sa.Column("readers", sa.Text, nullable=False, default=""),
    sa.Column("tags", sa.Text, nullable=False, default=""),
    sa.Column("meta", sa.JSON, nullable=False),
    # Imaging job: present while a copy onto this drive is queued or running.
    sa.Column("imaging", sa.String(16)),
    sa.Column("image_source", sa.String(36)),
    sa.Column("image_gunzip", sa.Boolean, nullable=False, default=False),
    sa.Column("read_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("read_requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("write_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("write_requests", sa.BigInteger, nullable=False, default=0),
    # Library ("standard") drives only.
    sa.Column("media", sa.String(8)),
    sa.Column("format", sa.String(8)),
    sa.Column("rawsize", sa.BigInteger),
    sa.Column("created", sa.Float, nullable=False),
)

#: A drive attached to a server. An exclusive claim is the only row for its
#: drive; the check-and-insert happens in one write transaction, which on
#: PostgreSQL must first lock the drive's row (``get_drive(..., lock=True)``):
#: the primary key stops only one server claiming a drive twice.
claims = sa.Table(
    "claims",
    metadata,
    sa.Column("drive", sa.String(36), sa.ForeignKey("drives.uuid"), primary_key=True),
    # Indexed on its own: a server's claims are released by server.
    sa.Column("server", sa.String(36), primary_key=True, index=True),
    sa.Column("device", sa.String(16), nullable=False),
    sa.Column("exclusive", sa.Boolean, nullable=False),
)

ip_pools = sa.Table(
    "ip_pools",
    metadata,
    sa.Column("cidr", sa.String(64), primary_key=True),
    sa.Column("gateway", sa.String(45)),
    sa.Column("nameserver", sa.String(45)),
)

ips = sa.Table(
    "ips",
    metadata,
    sa.Column("address", sa.String(45), primary_key=True),
    sa.Column("pool", sa.String(64), sa.ForeignKey("ip_pools.cidr"), nullable=False, index=True),
    sa.Column("user", sa.String(36), sa.ForeignKey("users.uuid"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("tags", sa.Text, nullable=False, default=""),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

vlans = sa.Table(
    "vlans",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("user", sa.String(36), sa.ForeignKey("users.uuid"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("tags", sa.Text, nullable=False, default=""),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
