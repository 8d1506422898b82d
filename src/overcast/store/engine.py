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

PostgreSQL (psycopg 3) runs at READ COMMITTED. Reads are read-only
transactions. A write that checks something and then acts on it (quota,
exclusive claims) must lock the row the check depends on first
(``lock=True`` on :func:`overcast.store.users.get_user` or
:func:`overcast.store.drives.get_drive`, i.e. ``SELECT … FOR UPDATE``);
SQLite's writes are serial already and ignore it. Uniqueness is left to
constraints: a lost race is an :class:`sqlalchemy.exc.IntegrityError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Store", "Tx", "migrate", "sqlite_url"]

T = TypeVar("T")

_MIGRATIONS = Path(__file__).parent / "migrations"

#: How long (ms) a SQLite connection waits for another's lock before failing.
BUSY_TIMEOUT_MS = 10_000

#: ``pg_advisory_xact_lock`` key held while migrating, so that managers
#: starting together migrate one after the other ("over" in ASCII).
_MIGRATE_LOCK = 0x6F766572


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _sync_url(url: str) -> str:
    """The driver for a store URL: ``sqlite3`` or psycopg 3."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:/// or postgresql://")


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


#: One statement's parameters, or a list of them (one execution each).
Params: TypeAlias = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class Tx:
    """One open transaction, as the store's functions see it.

    ``execute`` is awaitable and returns a buffered result (rows already
    fetched), so the store's functions read the same on both backends.
    """

    #: ``sqlite`` or ``postgresql``, for the few statements that differ.
    dialect: str

    async def execute(self, statement: sa.Executable, parameters: Params = None) -> sa.Result[Any]:
        raise NotImplementedError

    async def run_sync(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` on the underlying connection, off the event loop when
        the transaction is (for big reads: fetching and converting 10,000
        rows should not stall every other request)."""
        raise NotImplementedError


class _SqliteTx(Tx):
    dialect = "sqlite"

    def __init__(self, conn: sa.Connection, run: _Runner) -> None:
        self._conn = conn
        self._run = run

    async def execute(self, statement: sa.Executable, parameters: Params = None) -> sa.Result[Any]:
        result: sa.Result[Any] = await self._run(
            functools.partial(_buffered, self._conn, statement, parameters)
        )
        return result

    async def run_sync(self, work: Callable[[sa.Connection], T]) -> T:
        result: T = await self._run(functools.partial(work, self._conn))
        return result


class _AsyncTx(Tx):
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self.dialect = conn.dialect.name

    async def execute(self, statement: sa.Executable, parameters: Params = None) -> sa.Result[Any]:
        return await self._conn.execute(statement, parameters)

    async def run_sync(self, work: Callable[[sa.Connection], T]) -> T:
        return await self._conn.run_sync(work)


def _buffered(conn: sa.Connection, statement: sa.Executable, parameters: Params) -> sa.Result[Any]:
    result = conn.execute(statement, parameters)
    if not result.returns_rows:
        return result
    rows: sa.Result[Any] = result.freeze()()
    return rows


_Runner = Callable[[Callable[[], Any]], Awaitable[Any]]


async def _inline(work: Callable[[], T]) -> T:
    return work()


async def _to_thread(work: Callable[[], T]) -> T:
    return await asyncio.to_thread(work)


class Store:
    """The open store: ``read()`` and ``write()`` transactions.

    How a statement reaches the database is chosen per backend, for speed.
    SQLite (``sqlite3``): reads in WAL mode never wait for a lock and take
    tens of microseconds, so they run inline on the event loop; a thread
    hop per statement, which is what an asyncio driver such as aiosqlite
    does, cost several times the query itself. Writes may wait for another
    process's lock (``busy_timeout``), so they run on one dedicated writer
    thread, which also keeps them serial. PostgreSQL: psycopg 3's native
    asyncio connections; no threads at all, and a transaction waiting for
    a row lock holds only a pooled connection.

    Holds connection pools and a thread; :meth:`close` them.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        surl = _sync_url(url)
        self.dialect = sa.make_url(surl).get_backend_name()
        self._engines: tuple[sa.Engine, ...] = ()
        self._async: AsyncEngine | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="overcast-store"
        )
        if self.dialect == "sqlite":
            args = {"check_same_thread": False}
            self._writer = sa.create_engine(surl, pool_size=1, max_overflow=0, connect_args=args)
            # Unbounded overflow: reads run inline, so waiting for a free
            # connection would block the very loop that returns them.
            self._reader = sa.create_engine(surl, pool_size=8, max_overflow=-1, connect_args=args)
            _sqlite_transactions(self._writer, begin="BEGIN IMMEDIATE")
            _sqlite_transactions(self._reader, begin="BEGIN", query_only=True)
            self._engines = (self._writer, self._reader)
        else:
            # pre_ping: a server restart must not leave dead pooled
            # connections that fail the next request.
            self._async = create_async_engine(
                surl, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
            # Same pool; each read is a READ ONLY, REPEATABLE READ transaction:
            # one snapshot, as on SQLite (and read-only ones never fail to
            # serialize).
            self._async_reader = self._async.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        # One writer at a time inside this process; other processes queue on
        # SQLite's lock (busy_timeout). PostgreSQL takes row locks instead.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # The task inside write(): a nested write() in that same task would
        # wait for itself forever on SQLite and not be atomic on PostgreSQL.
        # (A task it starts inherits the value but is another task: allowed.)
        self._writer_task: contextvars.ContextVar[asyncio.Task[Any] | None] = (
            contextvars.ContextVar(f"overcast-store-writer-{id(self)}", default=None)
        )

    async def _threaded(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    @asynccontextmanager
    async def _sqlite(self, engine: sa.Engine, run: _Runner, *, commit: bool) -> AsyncIterator[Tx]:
        conn: sa.Connection = await run(engine.connect)
        try:
            await run(conn.begin)
            yield _SqliteTx(conn, run)
            if commit:
                await run(conn.commit)
        finally:
            # Shielded: a cancelled request must still give its connection
            # back, rolled back, or the single writer connection is lost.
            await asyncio.shield(run(functools.partial(_close, conn)))

    @asynccontextmanager
    async def read(self, *, big: bool = False) -> AsyncIterator[Tx]:
        """One read-only transaction: a consistent view, rolled back at the end.

        ``big``: the read fetches many rows; on SQLite it then runs in a
        worker thread instead of inline.
        """
        if self._async is None:
            run = _to_thread if big else _inline
            async with self._sqlite(self._reader, run, commit=False) as tx:
                yield tx
            return
        async with self._async_reader.connect() as conn:
            yield _AsyncTx(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """One transaction: committed on success, rolled back on any error."""
        task = asyncio.current_task()
        if task is not None and self._writer_task.get() is task:
            raise RuntimeError("write() inside write(): use the open transaction")
        token = self._writer_task.set(task)
        try:
            if self._async is not None:
                async with self._async.begin() as conn:
                    yield _AsyncTx(conn)
            else:
                assert self._write_lock is not None
                async with (
                    self._write_lock,
                    self._sqlite(self._writer, self._threaded, commit=True) as tx,
                ):
                    yield tx
        finally:
            self._writer_task.reset(token)

    async def close(self) -> None:
        for engine in self._engines:
            await self._threaded(engine.dispose)
        if self._async is not None:
            await self._async.dispose()
        self._executor.shutdown(wait=True)


def _close(conn: sa.Connection) -> None:
    """Roll back whatever is still open and return the connection to its pool."""
    try:
        if conn.in_transaction():
            conn.rollback()
    finally:
        conn.close()
