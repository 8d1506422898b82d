"""The SQL schema (SQLAlchemy Core). Alembic migrations create it.

Space-separated lists (``readers``, ``tags``) are stored as the text the API
shows; free ``user:*`` metadata is a JSON object.

What one server holds lives in rows that name it with a cascading foreign
key (its claims, its NICs): deleting the server's row releases them in the
same statement, so no path can forget one.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "claims",
    "deliveries",
    "drives",
    "events",
    "hosts",
    "ip_pools",
    "ips",
    "metadata",
    "nics",
    "servers",
    "usage",
    "users",
    "vlans",
]

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
    # Signs the user's callbacks (Standard Webhooks ``whsec_…``). Unlike the
    # API key it must be kept: the signer needs the secret itself.
    sa.Column("callback_secret", sa.String(64)),
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
    # Usage is in the ledger up to here (NULL: since ``created``).
    sa.Column("billed", sa.Float),
)

#: A drive attached to a running server. An exclusive claim is the only row
#: for its drive; the check-and-insert happens in one write transaction,
#: which on PostgreSQL must first lock the drive's row
#: (``get_drive(..., lock=True)``): the primary key stops only one server
#: claiming a drive twice. Deleting the server deletes its claims.
claims = sa.Table(
    "claims",
    metadata,
    sa.Column("drive", sa.String(36), sa.ForeignKey("drives.uuid"), primary_key=True),
    # Indexed on its own: a server's claims are released by server.
    sa.Column(
        "server",
        sa.String(36),
        sa.ForeignKey("servers.uuid", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
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

#: A server's definition and where it runs. ``config`` is the configuration
#: as validated (the key/value mapping :func:`overcast.model.server.parse_server_spec`
#: accepts): the one source of everything the user configured. ``name``,
#: ``persistent``, ``cpu``, ``mem`` and ``smp`` repeat what it says, written
#: from it by the same statement, so that quota and capacity are SQL sums.
servers = sa.Table(
    "servers",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("user", sa.String(36), sa.ForeignKey("users.uuid"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("persistent", sa.Boolean, nullable=False),
    sa.Column("cpu", sa.Integer, nullable=False),
    sa.Column("mem", sa.Integer, nullable=False),
    sa.Column("smp", sa.Integer, nullable=False),
    # The host's id ("local" in the all-in-one cloud). No index of its own:
    # the unique (host, vnc_port) index below starts with it.
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    # The VNC server's address and TCP port while the guest has one.
    sa.Column("vnc_ip", sa.String(45)),
    sa.Column("vnc_port", sa.Integer),
    sa.Column("started", sa.Float),
    sa.Column("created", sa.Float, nullable=False),
    # This run's usage is in the ledger up to here (NULL: since ``started``).
    sa.Column("billed", sa.Float),
    # One VNC port per host; NULLs (no VNC) never collide.
    sa.UniqueConstraint("host", "vnc_port", name="uq_servers_host_vnc_port"),
)

#: A server's NICs as realised: the MAC fixed (generated when the
#: configuration gave none) and the public address in use. The constraints
#: are the guarantees the create path leans on: a MAC once per network, an
#: address in use by one NIC at most, and no VLAN deleted while a NIC is on
#: it (the foreign key).
nics = sa.Table(
    "nics",
    metadata,
    sa.Column(
        "server",
        sa.String(36),
        sa.ForeignKey("servers.uuid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("model", sa.String(16), nullable=False),
    sa.Column("mac", sa.String(17), nullable=False),
    # NULL: the public network.
    sa.Column("vlan", sa.String(36), sa.ForeignKey("vlans.uuid")),
    # ``vlan`` again, with '' for the public network: NULLs never collide
    # in a unique index, so the (network, mac) index needs a value there.
    # (A partial unique index would do too, but SQLAlchemy reflects its
    # condition as an object that cannot be compared.)
    sa.Column("network", sa.String(36), nullable=False),
    # Not a foreign key to ``ips``: ``nic:0:dhcp auto`` may use an address
    # nobody owns.
    sa.Column("ip", sa.String(45), unique=True),
    # Also the index for lookups by network.
    sa.UniqueConstraint("network", "mac", name="uq_nics_network_mac"),
    sa.CheckConstraint("network = COALESCE(vlan, '')", name="ck_nics_network"),
)

#: The transactional outbox: one row per exit or revive, written by the same
#: transaction as the state change that caused it. ``id`` orders the event
#: feed (its cursor); ``uuid`` is the webhook id, stable across retries;
#: ``seq`` counts a server's events from 1. No foreign key to ``servers``:
#: an exit outlives the server it ends.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uuid", sa.String(36), nullable=False, unique=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("user", sa.String(36), nullable=False, index=True),
    sa.Column("server", sa.String(36), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("callback", sa.Text),
    # Also the index for a server's events: a second event with the same
    # number (two writers racing) is an IntegrityError.
    sa.UniqueConstraint("server", "seq", name="uq_events_server_seq"),
)

#: One callback still to make, or made, for an event. ``delivered_at`` set:
#: done; ``abandoned_at`` set: retried for as long as we promise, given up.
#: Neither: pending, due at ``next_attempt``.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column(
        "event",
        sa.Integer,
        sa.ForeignKey("events.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt", sa.Float, nullable=False, index=True),
    sa.Column("delivered_at", sa.Float),
    sa.Column("abandoned_at", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
)

#: The billing ledger: one row per interval of use. A server's rows tile its
#: running time (from ``started`` to its end, cut by the periodic "exists"
#: rows); a drive's tile its life. ``cpu`` (MHz) and ``mem`` (MiB) for
#: servers, ``bytes`` for drives, as they were over the interval.
usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("object", sa.String(36), nullable=False, index=True),
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("end", sa.Float, nullable=False),
    sa.Column("cpu", sa.Integer),
    sa.Column("mem", sa.Integer),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("recorded", sa.Float, nullable=False),
    sa.Index("ix_usage_user_end", "user", "end"),
)

#: The hosts a manager places guests on (``local``: its own machine, with
#: no URL). A URL names one host agent at most.
hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("url", sa.Text, unique=True),
    sa.Column("cpu", sa.BigInteger, nullable=False),
    sa.Column("mem", sa.BigInteger, nullable=False),
    sa.Column("draining", sa.Boolean, nullable=False, default=False),
    sa.Column("created", sa.Float, nullable=False),
)
