"""Opening the store: engines, transactions and migrations.

SQLite (the embedded default) runs in WAL mode so readers never wait for
the writer. Writes go through one connection and start with ``BEGIN
IMMEDIATE``: a deferred transaction that later wants to write can fail with
"database is locked" at once, whatever the busy timeout, whereas an
immediate one simply queues. PostgreSQL needs none of this: writes rely on
unique constraints and row locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

__all__ = ["Store", "async_url", "migrate", "sqlite_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"


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
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    engine = sa.create_engine(_sync_url(url))
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()


class Store:
    """The open store: ``read()`` and ``write()`` transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        aurl = async_url(url)
        self.dialect = sa.make_url(aurl).get_backend_name()
        if self.dialect == "sqlite":
            self._reader = create_async_engine(aurl, pool_size=4, max_overflow=4)
            self._writer = create_async_engine(aurl, pool_size=1, max_overflow=0)
            for engine in (self._reader, self._writer):
                sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            sa.event.listen(self._writer.sync_engine, "connect", _no_implicit_begin)
            sa.event.listen(self._writer.sync_engine, "begin", _begin_immediate)
        else:
            self._reader = self._writer = create_async_engine(aurl, pool_size=10, max_overflow=10)
        # One writer at a time inside this process; other processes queue on
        # SQLite's lock (busy_timeout) or PostgreSQL's row locks.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed on success, rolled back on any error."""
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._writer.begin() as conn:
            yield conn

    async def close(self) -> None:
        await self._reader.dispose()
        if self._writer is not self._reader:
            await self._writer.dispose()


def _no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite quirk).
    dbapi_conn.isolation_level = None


def _begin_immediate(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
