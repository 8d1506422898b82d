"""Opening the store: engines, transactions and migrations.

SQLite (the embedded default) runs in WAL mode so readers never wait for
the writer. SQLAlchemy, not the ``sqlite3`` module, emits ``BEGIN`` (the
recipe of SQLAlchemy's SQLite documentation, "Enabling Non-Legacy SQLite
Transactional Modes"): left to itself the module begins no transaction
before a SELECT or DDL, so a read of two tables would not be one snapshot
and a migration would not be atomic.

* Reads use a pool of query-only connections; each ``read()`` is one
  deferred ``BEGIN``: one consistent snapshot, and never a lock.
* Writes go through one connection per :class:`Store`, one transaction at
  a time, each starting with ``BEGIN IMMEDIATE``. A deferred transaction
  that later wants to write fails with "database is locked" at once when
  another connection wrote meanwhile, whatever the busy timeout; an
  immediate one takes the write lock first, so a writer in another process
  (the CLI while the server runs) simply waits up to ``busy_timeout``.

PostgreSQL (psycopg 3, async) runs at READ COMMITTED. Reads are read-only
transactions. A write that checks something and then acts on it (quota,
exclusive claims) must lock the row the check depends on first
(``lock=True`` on :func:`overcast.store.users.get_user` or
:func:`overcast.store.drives.get_drive`, i.e. ``SELECT … FOR UPDATE``);
SQLite's writes are serial already and ignore it. Uniqueness is left to
constraints: a lost race is an :class:`sqlalchemy.exc.IntegrityError`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Store", "async_url", "migrate", "sqlite_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"

#: How long (ms) a SQLite connection waits for another's lock before failing.
BUSY_TIMEOUT_MS = 10_000

#: ``pg_advisory_xact_lock`` key held while migrating, so that managers
#: starting together migrate one after the other ("over" in ASCII).
_MIGRATE_LOCK = 0x6F766572


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def async_url(url: str) -> str:
    """The asyncio driver for a store URL (``sqlite:`` → aiosqlite)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:/// or postgresql://")


def _sync_url(url: str) -> str:
    parsed = sa.make_url(async_url(url))
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=False)


def _sqlite_transactions(
    engine: sa.Engine, *, begin: str, foreign_keys: bool = True, query_only: bool = False
) -> None:
    """Set a SQLite engine's pragmas and let SQLAlchemy emit ``begin``."""

    def connect(dbapi_conn: Any, _record: Any) -> None:
        # Stop sqlite3 from emitting BEGIN itself; it still commits and rolls
        # back correctly.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # The timeout first: switching to WAL needs a lock another may hold.
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses no committed transaction on a crash of the
        # process, only (on power loss) the last few; it saves an fsync per
        # commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        if query_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    def on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(begin)

    sa.event.listen(engine, "connect", connect)
    sa.event.listen(engine, "begin", on_begin)


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent).

    Safe to call from several processes at once: SQLite's ``BEGIN
    IMMEDIATE`` or PostgreSQL's advisory lock makes the later caller wait,
    and it then finds the schema at head. On SQLite foreign keys are off
    while migrating (batch migrations copy a table and drop the old one,
    which with foreign keys on would fail or cascade) and checked before
    the commit.
    """
    engine = sa.create_engine(_sync_url(url), poolclass=sa.NullPool)
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        _sqlite_transactions(engine, begin="BEGIN IMMEDIATE", foreign_keys=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    try:
        with engine.begin() as conn:
            if not sqlite:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK)))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            if sqlite and (bad := conn.exec_driver_sql("PRAGMA foreign_key_check").all()):
                raise RuntimeError(f"migration broke foreign keys: {bad[:5]}")
    finally:
        engine.dispose()


class Store:
    """The open store: ``read()`` and ``write()`` transactions.

    Holds connection pools; :meth:`close` them. Engines bind no event loop
    until first used, so a Store may be made outside one.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        aurl = async_url(url)
        self.dialect = sa.make_url(aurl).get_backend_name()
        self._engines: tuple[AsyncEngine, ...]
        if self.dialect == "sqlite":
            self._writer = create_async_engine(aurl, pool_size=1, max_overflow=0)
            self._reader = create_async_engine(aurl, pool_size=4, max_overflow=4)
            _sqlite_transactions(self._writer.sync_engine, begin="BEGIN IMMEDIATE")
            _sqlite_transactions(self._reader.sync_engine, begin="BEGIN", query_only=True)
            self._engines = (self._writer, self._reader)
        else:
            # pre_ping: a server restart must not leave dead pooled
            # connections that fail the next request.
            self._writer = create_async_engine(
                aurl, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
            # Same pool; each read is a READ ONLY, REPEATABLE READ transaction:
            # one snapshot, as on SQLite (and read-only ones never fail to
            # serialize).
            self._reader = self._writer.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            self._engines = (self._writer,)
        # One writer at a time inside this process; other processes queue on
        # SQLite's lock (busy_timeout). PostgreSQL takes row locks instead.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # The task inside write(): a nested write() in that same task would
        # wait for itself forever on SQLite and not be atomic on PostgreSQL.
        # (A task it starts inherits the value but is another task: allowed.)
        self._writer_task: contextvars.ContextVar[asyncio.Task[Any] | None] = (
            contextvars.ContextVar(f"overcast-store-writer-{id(self)}", default=None)
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """One read-only transaction: a consistent view, rolled back at the end."""
        async with self._reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed on success, rolled back on any error."""
        task = asyncio.current_task()
        if task is not None and self._writer_task.get() is task:
            raise RuntimeError("write() inside write(): use the open transaction")
        token = self._writer_task.set(task)
        try:
            if self._write_lock is None:
                async with self._writer.begin() as conn:
                    yield conn
            else:
                async with self._write_lock, self._writer.begin() as conn:
                    yield conn
        finally:
            self._writer_task.reset(token)

    async def close(self) -> None:
        for engine in self._engines:
            await engine.dispose()
