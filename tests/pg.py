"""A throwaway PostgreSQL server for the tests.

Loaded as a pytest plugin by ``tests/conftest.py`` (``pytest_plugins = ["pg"]``),
it provides:

* ``pg_url`` — a session-scoped fixture: a real PostgreSQL server (Debian's
  packages, the newest of ``/usr/lib/postgresql/*/bin``) started in a temporary
  folder, listening only on 127.0.0.1 on a free port and on a unix socket in
  that folder, with trust authentication and ``fsync=off``. Its value is a
  SQLAlchemy URL, ``postgresql+psycopg://postgres@127.0.0.1:PORT/DBNAME``, of a
  database created for the session. The server is stopped (``-m immediate``)
  and its folder removed when the session ends.
* ``fresh_database(pg_url)`` — creates a new, empty, uniquely named database on
  the same server and returns its URL, so each test can have its own.
* ``running_postgres()`` — the context manager behind the fixture, for use
  outside pytest (benchmarks).

PostgreSQL refuses to run as root, so when the tests run as root the server
is initialised and run as the ``postgres`` system user (``runuser``), in a
folder owned by that user. Missing binaries make the fixture fail, never skip:
``bash scripts/setup.sh test`` installs them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

__all__ = [
    "PgSetupError",
    "PostgresServer",
    "find_pg_bindir",
    "fresh_database",
    "pg_url",
    "running_postgres",
]

PG_ROOT = Path("/usr/lib/postgresql")
PG_SYSTEM_USER = "postgres"
PG_SUPERUSER = "postgres"
HOST = "127.0.0.1"
_START_ATTEMPTS = 3
_TIMEOUT_S = 60


class PgSetupError(RuntimeError):
    """The throwaway PostgreSQL server could not be set up."""


@dataclass(frozen=True)
class PostgresServer:
    bindir: Path
    basedir: Path
    port: int
    dbname: str

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_SUPERUSER}@{HOST}:{self.port}/{self.dbname}"


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        return (-1,)


def find_pg_bindir() -> Path:
    """The ``bin`` folder of the newest PostgreSQL installed under PG_ROOT."""
    candidates = [
        d / "bin"
        for d in PG_ROOT.glob("*")
        if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file()
    ]
    if not candidates:
        raise PgSetupError(
            f"no PostgreSQL server binaries (initdb, pg_ctl) under {PG_ROOT}/*/bin; "
            "install them with `bash scripts/setup.sh test` (Debian package postgresql)"
        )
    return max(candidates, key=lambda b: _version_key(b.parent))


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_command(bindir: Path, tool: str, *args: str) -> list[str]:
    argv = [str(bindir / tool), *args]
    if _as_root():
        argv = ["runuser", "-u", PG_SYSTEM_USER, "--", *argv]
    return argv


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise PgSetupError(
            f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n"
            f"{result.stdout}{result.stderr}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _make_basedir() -> Path:
    # As root, /tmp itself (not e.g. /tmp/pytest-of-root, mode 0700) so that
    # the postgres user can reach the folder.
    basedir = Path(tempfile.mkdtemp(prefix="overcast-pg-", dir="/tmp" if _as_root() else None))
    if _as_root():
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(basedir, pw.pw_uid, pw.pw_gid)
    return basedir


def _init(bindir: Path, basedir: Path) -> None:
    datadir = basedir / "data"
    _run(
        _pg_command(
            bindir,
            "initdb",
            "-D",
            str(datadir),
            "-U",
            PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ),
        "initdb",
    )
    # These files stay owned by the postgres user (writing keeps the owner).
    (datadir / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 trust\n", encoding="utf-8"
    )
    with (datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            "\n# overcast test server\n"
            f"listen_addresses = '{HOST}'\n"
            f"unix_socket_directories = '{basedir}'\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "max_connections = 200\n"
            "logging_collector = off\n"
        )


def _start(bindir: Path, basedir: Path) -> int:
    """Start the server on a free port; returns the port."""
    log = basedir / "server.log"
    last_error: PgSetupError | None = None
    # The free port may be taken between choosing and binding: try again.
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        try:
            _run(
                _pg_command(
                    bindir,
                    "pg_ctl",
                    "-D",
                    str(basedir / "data"),
                    "-l",
                    str(log),
                    "-o",
                    f"-p {port}",
                    "-w",
                    "-t",
                    str(_TIMEOUT_S),
                    "start",
                ),
                "pg_ctl start",
            )
        except PgSetupError as err:
            last_error = PgSetupError(f"{err}\n--- server log ---\n{_log_tail(log)}")
            continue
        return port
    assert last_error is not None
    raise last_error


def _stop(bindir: Path, basedir: Path) -> None:
    datadir = basedir / "data"
    if not (datadir / "postmaster.pid").exists():
        return
    try:
        _run(_pg_command(bindir, "pg_ctl", "-D", str(datadir), "-m", "immediate", "stop"), "stop")
    except (PgSetupError, subprocess.TimeoutExpired):
        # Last resort: kill the postmaster named in its pid file.
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        raise


def _create_database(host: str, port: int, user: str, dbname: str) -> None:
    with psycopg.connect(
        host=host, port=port, user=user, dbname="postgres", autocommit=True, connect_timeout=10
    ) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


@contextlib.contextmanager
def running_postgres(dbname: str = "overcast_test") -> Iterator[PostgresServer]:
    """Start a throwaway server with one database; stop and remove it on exit."""
    bindir = find_pg_bindir()
    basedir = _make_basedir()
    try:
        _init(bindir, basedir)
        port = _start(bindir, basedir)
        try:
            _create_database(HOST, port, PG_SUPERUSER, dbname)
            yield PostgresServer(bindir=bindir, basedir=basedir, port=port, dbname=dbname)
        finally:
            _stop(bindir, basedir)
    finally:
        shutil.rmtree(basedir, ignore_errors=True)


def fresh_database(pg_url: str) -> str:
    """Create a new, empty, uniquely named database next to ``pg_url``'s; return its URL."""
    url = make_url(pg_url)
    name = f"t_{uuid.uuid4().hex[:16]}"
    _create_database(url.host or HOST, url.port or 5432, url.username or PG_SUPERUSER, name)
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of a database on a throwaway PostgreSQL server (see module doc)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_postgres())
        except PgSetupError as err:
            pytest.fail(f"test PostgreSQL server: {err}", pytrace=False)
        yield server.url
