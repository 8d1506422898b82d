"""``overcast serve`` and ``overcast admin …``: the operator's commands.

Scripts call these; their options and output (``key value`` lines, the
API's text format) are stable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import urlsplit

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from overcast.api.app import build_app
from overcast.cluster.cloud import Cloud
from overcast.config import Settings, load_settings
from overcast.events.ledger import UsageTotal, totals
from overcast.logs import setup_logging
from overcast.model.codec import Record, encode_text
from overcast.model.drive import Drive, Media, drive_info
from overcast.model.errors import OvercastError
from overcast.model.keys import parse_time, parse_uuid
from overcast.store.usage import usage_between

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
admin = typer.Typer(no_args_is_help=True, help="Operator commands on the store.")
user_cmd = typer.Typer(no_args_is_help=True, help="Users.")
drive_cmd = typer.Typer(no_args_is_help=True, help="Library drives.")
ip_cmd = typer.Typer(no_args_is_help=True, help="IP address pools.")
billing_cmd = typer.Typer(no_args_is_help=True, help="The usage ledger.")
host_cmd = typer.Typer(no_args_is_help=True, help="The host registry.")
app.add_typer(admin, name="admin")
admin.add_typer(user_cmd, name="user")
admin.add_typer(drive_cmd, name="drive")
admin.add_typer(ip_cmd, name="ip")
admin.add_typer(billing_cmd, name="billing")
admin.add_typer(host_cmd, name="host")

DataOpt = Annotated[Path | None, typer.Option("--data", help="Data directory [./var].")]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store URL (sqlite:/// or postgresql://).")
]

#: Where ``serve`` keeps the first admin's credentials (mode 0600).
ADMIN_FILE = "admin.txt"


def _fail(message: str) -> typer.Exit:
    """Print one ``error: …`` line on stderr; the caller raises the result."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _store_problem(err: SQLAlchemyError) -> str:
    """The driver's own words (first line), not SQLAlchemy's wrapper and link."""
    cause = getattr(err, "orig", None) or err
    lines = str(cause).strip().splitlines()
    return f"store: {lines[0] if lines else type(cause).__name__}"


def _run(settings: Settings, action: Callable[[Cloud], Awaitable[T]]) -> T:
    """Open the cloud, act, close it; an operator's mistake (a bad argument,
    an unreachable store, a missing file) is one ``error:`` line and exit
    status 1, never a traceback.
    """

    async def main() -> T:
        cloud = await Cloud.open(settings, background=False)
        try:
            return await action(cloud)
        finally:
            await cloud.close()

    try:
        return asyncio.run(main())
    except OvercastError as err:
        raise _fail(err.message) from None
    except SQLAlchemyError as err:
        raise _fail(_store_problem(err)) from None
    except (OSError, ValueError) as err:
        # A file that vanished or cannot be read; a store URL of no known kind.
        raise _fail(str(err)) from None


def _settings(
    data: Path | None,
    listen: str | None = None,
    store: str | None = None,
    overrides: dict[str, str] | None = None,
) -> Settings:
    try:
        return load_settings(data=data, listen=listen, store=store, overrides=overrides)
    except (ValueError, OSError) as err:
        raise _fail(f"configuration: {err}") from None


@admin.callback()
def admin_options(ctx: typer.Context, data: DataOpt = None, store: StoreOpt = None) -> None:
    ctx.obj = _settings(data, store=store)


@user_cmd.command("create")
def user_create(
    ctx: typer.Context,
    name: str,
    is_admin: Annotated[bool, typer.Option("--admin", help="An admin user.")] = False,
) -> None:
    """Create a user; prints its uuid and secret key (shown only now)."""
    user, secret = _run(ctx.obj, lambda c: c.users.create(name, admin=is_admin))
    typer.echo(encode_text({"uuid": user.uuid, "secret": secret}), nl=False)


@drive_cmd.command("import-standard")
def drive_import(
    ctx: typer.Context,
    file: Path,
    name: Annotated[str, typer.Option("--name", help="The drive's name.")],
    uuid: Annotated[str | None, typer.Option("--uuid", help="Fixed UUID.")] = None,
    media: Annotated[Media, typer.Option("--media", help="disk or cdrom.")] = Media.DISK,
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Succeed if a library drive with --uuid exists.")
    ] = False,
) -> None:
    """Register a library drive (gzip or raw file), readable by everyone."""

    async def work(cloud: Cloud) -> Drive:
        if exist_ok and uuid and (known := await cloud.drives.standard(uuid)) is not None:
            return known
        return await cloud.drives.import_standard(file, name, uuid=uuid, media=media)

    typer.echo(encode_text(drive_info(_run(ctx.obj, work))), nl=False)


@ip_cmd.command("add-pool")
def ip_add_pool(
    ctx: typer.Context,
    cidr: str,
    gateway: Annotated[str | None, typer.Option("--gateway")] = None,
    nameserver: Annotated[str | None, typer.Option("--nameserver")] = None,
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Succeed if exactly this pool exists.")
    ] = False,
) -> None:
    """Add an address range that users' IPs are drawn from."""

    async def work(cloud: Cloud) -> None:
        if exist_ok and cidr.strip() in await cloud.resources.pools():
            return
        await cloud.resources.add_pool(cidr, gateway, nameserver)

    _run(ctx.obj, work)
    typer.echo(f"pool {cidr}")


@host_cmd.command("add")
def host_add(
    ctx: typer.Context,
    url: str,
    cpu: Annotated[int, typer.Option("--cpu", help="MHz it offers guests.")],
    mem: Annotated[int, typer.Option("--mem", help="MiB it offers guests.")],
    name: Annotated[str | None, typer.Option("--name", help="A name [the URL].")] = None,
) -> None:
    """Register a host agent; prints its info (the API's text format)."""
    keys = {"url": url, "cpu": str(cpu), "mem": str(mem)}
    if name is not None:
        keys["name"] = name

    async def work(cloud: Cloud) -> Record:
        return await cloud.hosts.info(await cloud.hosts.create(keys))

    typer.echo(encode_text(_run(ctx.obj, work)), nl=False)


@billing_cmd.command("report")
def billing_report(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="One user's UUID [all].")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Epoch seconds or ISO 8601 [--to minus 1 day].")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Epoch seconds or ISO 8601 [now].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Usage per server and drive over a time window, from the ledger."""
    try:
        until = parse_time("--to", end) if end is not None else time.time()
        since = parse_time("--from", start) if start is not None else until - 86400
        who = parse_uuid("--user", user) if user is not None else None
    except OvercastError as err:
        raise _fail(err.message) from None
    if since > until:
        raise _fail("--from must not be after --to")

    async def work(cloud: Cloud) -> list[UsageTotal]:
        async with cloud.store.read(big=True) as tx:
            records = await usage_between(tx, who, since, until)
        return totals(records, since, until)

    found = _run(ctx.obj, work)
    if as_json:
        document = {
            "from": since,
            "to": until,
            "user": who,
            "usage": [dataclasses.asdict(t) for t in found],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    table = Table(title=f"usage {_when(since)} .. {_when(until)}")
    for column in ("user", "kind", "object", "seconds", "MHz·s", "MiB·s", "GiB·s"):
        table.add_column(
            column, justify="left" if column in ("user", "kind", "object") else "right"
        )
    for t in found:
        table.add_row(
            t.user,
            t.kind,
            t.object,
            f"{t.seconds:.1f}",
            f"{t.cpu_mhz_seconds:.0f}",
            f"{t.mem_mib_seconds:.0f}",
            f"{t.gib_seconds:.1f}",
        )
    Console(width=200).print(table)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


async def _first_admin(cloud: Cloud) -> tuple[str, str] | None:
    if await cloud.users.count_admins():
        return None
    user, secret = await cloud.users.create("admin", admin=True)
    return user.uuid, secret


@app.command()
def serve(
    data: DataOpt = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT [127.0.0.1:8080].")
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Run the all-in-one cloud (manager and local host)."""
    settings = _settings(data, listen, store)
    setup_logging()
    _announce(settings, _run(settings, _first_admin))
    _serve(settings)


@app.command("host")
def host_agent(
    manager: Annotated[
        str,
        typer.Option(
            "--manager", help="The manager's URL with its admin credentials: http://U:K@HOST:PORT."
        ),
    ],
    data: DataOpt = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT [127.0.0.1:8080].")
    ] = None,
    etcd: Annotated[
        str | None, typer.Option("--etcd", help="etcd endpoints, comma-separated.")
    ] = None,
    drives: Annotated[
        Path | None, typer.Option("--drives", help="The shared drive directory.")
    ] = None,
    host_id: Annotated[
        str | None, typer.Option("--id", help="This host's id in etcd [hostname].")
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Run a host agent: a one-machine cloud that accepts the manager's
    admin credentials, registers with it, and (with etcd) holds a lease."""
    parts = urlsplit(manager)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(f"--manager: {manager[:80]!r} is not an http:// or https:// URL")
    if not parts.username or not parts.password:
        raise _fail("--manager: give the manager's admin credentials: http://UUID:SECRET@HOST:PORT")
    given = {"manager": manager, "etcd": etcd, "drives": drives, "host_id": host_id}
    overrides = {k: str(v) for k, v in given.items() if v is not None}
    settings = _settings(data, listen, store, overrides)
    setup_logging()
    typer.echo(f"overcast host {settings.host_id} listening on {settings.url}/")
    shown = urlsplit(settings.manager)
    typer.echo(f"manager: {shown._replace(netloc=shown.netloc.rpartition('@')[2]).geturl()}")
    _serve(settings)


def _announce(settings: Settings, created: tuple[str, str] | None) -> None:
    creds = settings.data / ADMIN_FILE
    if created:
        fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(encode_text({"uuid": created[0], "secret": created[1]}))
    typer.echo(f"overcast listening on http://{settings.listen}/")
    if creds.is_file():
        typer.echo(f"admin credentials ({creds}):")
        typer.echo(creds.read_text(), nl=False)
    else:
        typer.echo("admin: an admin user exists; create another with 'overcast admin user create'")


def _serve(settings: Settings) -> None:
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop="asyncio",
        # GFD.223: OCCI servers name the version they speak in ``Server``.
        server_header=False,
        headers=[("server", "overcast OCCI/1.2")],
    )
