"""A host agent elsewhere, as a :class:`~overcast.host.client.HostClient`.

A remote host is a one-machine cloud of its own (another ``overcast
serve``), so the manager drives it with the API every client uses, as an
admin: a guest is a server created with the manager's id (``POST
/servers/S/create``, privileged: a *trusted* create, whose drives are files
in the shared drive pool and whose VLANs need no rows on the host), with
``callback:exit`` pointing back at the manager so that every end reaches it
through the host's outbox, retried until acknowledged. Power verbs are the
server verbs; only the agent's own view of a guest needs a privileged read
of its own (``/guests/…``, :mod:`overcast.api.guests`), decoded by
:mod:`overcast.host.wire` so that :meth:`RemoteHost.info` is exactly what
the agent there holds.

The host's error replies come back as the same
:class:`~overcast.model.errors.OvercastError` kinds (its
``X-Elastic-Error``), so the manager handles a remote failure as it handles
a local one. A host that cannot be reached, or that answers something other
than overcast does, is a :class:`~overcast.model.errors.FailedError` naming
the host but never its credentials.

Not done remotely yet: hot-plug (attach and detach of disks and NICs) is a
:class:`~overcast.model.errors.BusyError`.

Not here: the manager's choices (``overcast.cluster``), the host's side
(the API and its agent).
"""

from __future__ import annotations

import logging
import time
import uuid as _uuid
from collections.abc import Sequence

import httpx

from overcast.host.agent import ExitSink, GuestEnd, RunningGuest
from overcast.host.client import HostClient
from overcast.host.wire import decode_running_guest
from overcast.hypervisor.spec import DiskSpec, GuestSpec, NicSpec
from overcast.model.errors import (
    AuthError,
    BusyError,
    FailedError,
    HostSilent,
    HostUnreachable,
    Kind,
    MissingError,
    OvercastError,
    UsageError,
)

__all__ = ["RemoteHost", "create_keys"]

log = logging.getLogger(__name__)

#: Longest stretch of a host's error message kept in ours.
_MESSAGE_MAX = 500
#: Seconds to wait for a connection, whatever the call's timeout: a host
#: that does not accept one in this long is down, not busy.
_CONNECT_TIMEOUT = 10.0
#: Each kind's class: the one subclass of the error root that has it.
_ERRORS: dict[Kind, type[OvercastError]] = {
    cls.kind: cls
    for cls in OvercastError.__subclasses__()
    if cls.__module__ == OvercastError.__module__
}


def create_keys(spec: GuestSpec, networks: Sequence[str | None], exits_url: str) -> dict[str, str]:
    """The server configuration that makes a host run ``spec`` with NIC i on
    VLAN ``networks[i]`` (None: the public network, and no address, which
    is the manager's business) and report its end to ``exits_url``.

    Pure. What the host chooses itself is left out: taps, the VNC address
    (``vnc auto``), image paths (a drive is its file's name, a UUID, in the
    host's pool). Never ``persistent``: the manager owns a server's life,
    the host only runs one run of it.
    """
    if len(networks) != len(spec.nics):
        raise UsageError(f"{len(spec.nics)} NICs but {len(networks)} networks")
    keys = {
        "name": spec.name,
        "cpu": str(spec.cpu_mhz),
        "smp": str(spec.smp),
        "mem": str(spec.mem_mib),
    }
    for disk in spec.disks:
        if disk.format != "raw":
            raise UsageError(f"{disk.name}: a remote host opens raw images only")
        keys[disk.name] = disk.image.name
        if disk.media == "cdrom":
            keys[f"{disk.name}:media"] = "cdrom"
    booting = sorted(
        (d for d in spec.disks if d.bootindex is not None), key=lambda d: d.bootindex or 0
    )
    if booting:
        keys["boot"] = " ".join(d.name for d in booting)
    shared = [d.image.name for d in spec.disks if d.shared]
    if shared:
        keys["shared"] = " ".join(shared)
    for nic, network in zip(spec.nics, networks, strict=True):
        prefix = f"nic:{nic.slot}"
        keys[f"{prefix}:model"] = nic.model
        keys[f"{prefix}:mac"] = nic.mac
        if network is not None:
            keys[f"{prefix}:vlan"] = network
    if spec.vnc is not None:
        # The API turns a console on with its password and has no console without one.
        if spec.vnc.password is None:
            raise UsageError("a remote host serves a guest's console only with a password")
        keys["vnc"] = "auto"
        keys["vnc:password"] = spec.vnc.password
    keys["callback:exit"] = exits_url
    return keys


class RemoteHost(HostClient):
    """The host agent answering at ``url``, whose user part holds the admin
    credentials the manager uses there (``http://UUID:KEY@10.0.0.2:8080``).

    ``on_exit`` hears at once of the ends this client causes (:meth:`stop`);
    every end, those included, also reaches ``exits_url`` through the host's
    callback, so the sink behind both must be idempotent. ``timeout`` bounds
    each call (seconds); ``transport`` replaces httpx's network transport.
    """

    def __init__(
        self,
        url: str,
        on_exit: ExitSink,
        *,
        exits_url: str,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        try:
            given = httpx.URL(url)
        except httpx.InvalidURL:
            raise UsageError("a host's URL is not a URL") from None
        if given.scheme not in ("http", "https") or not given.host:
            raise UsageError("a host's URL must be http:// or https:// with a host")
        auth = httpx.BasicAuth(given.username, given.password) if given.username else None
        base = given.copy_with(userinfo=b"")
        #: Where the host answers, for messages: never the credentials.
        self.netloc = base.netloc.decode("ascii")
        self.on_exit = on_exit
        self.exits_url = exits_url
        self._client = httpx.AsyncClient(
            base_url=str(base).rstrip("/"),
            auth=auth,
            headers={"Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT)),
            transport=transport,
        )

    # -- guests --------------------------------------------------------------

    async def start(self, spec: GuestSpec, networks: Sequence[str | None]) -> RunningGuest:
        """Create the server ``spec.uuid`` on the host (which returns once
        its guest runs), then read the agent's view of it.

        If the reply is lost after the request went out, the host may have
        the guest anyway: it is destroyed there (as far as the host can be
        reached), so that a failed start leaves nothing behind.
        """
        server = spec.uuid
        keys = create_keys(spec, networks, self.exits_url)
        try:
            await self._post(f"/servers/{server}/create", keys)
        except FailedError as err:
            if _maybe_sent(err):
                await self._forget(server)
            raise
        try:
            return await self.info(server)
        except MissingError:
            raise FailedError(
                f"host {self.netloc}: guest {server} ended as soon as it started"
            ) from None
        except BaseException:
            await self._forget(server)
            raise

    async def powerdown(self, server: str) -> None:
        await self._post(f"/servers/{_checked(server)}/shutdown")

    async def stop(self, server: str) -> None:
        """The host kills the guest and processes its end before it replies;
        ``on_exit`` then hears of it here (the host's callback follows)."""
        await self._post(f"/servers/{_checked(server)}/stop")
        try:
            await self.on_exit(GuestEnd(server, "killed", False, time.time()))
        except Exception:  # the host's callback reports the end again
            log.exception("reporting the end of guest %s failed", server)

    async def reset(self, server: str) -> None:
        await self._post(f"/servers/{_checked(server)}/reset")

    async def pause(self, server: str) -> None:
        await self._post(f"/servers/{_checked(server)}/suspend")

    async def resume(self, server: str) -> None:
        await self._post(f"/servers/{_checked(server)}/resume")

    async def update(
        self, server: str, *, cpu_mhz: int | None = None, vnc_password: str | None = None
    ) -> None:
        keys: dict[str, str] = {}
        if cpu_mhz is not None:
            keys["cpu"] = str(cpu_mhz)
        if vnc_password is not None:
            keys["vnc:password"] = vnc_password
        if not keys:  # nothing to change, but the guest must run (as on a local host)
            await self.info(server)
            return
        await self._post(f"/servers/{_checked(server)}/set", keys)

    async def info(self, server: str) -> RunningGuest:
        response = await self._request("GET", f"/guests/{_checked(server)}/info")
        return decode_running_guest(self._json(response))

    async def running(self) -> set[str]:
        document = self._json(await self._request("GET", "/guests/list"))
        if not isinstance(document, list):
            raise self._malformed("/guests/list")
        servers = set()
        for item in document:
            if not isinstance(item, dict) or not isinstance(item.get("server"), str):
                raise self._malformed("/guests/list")
            servers.add(item["server"])
        return servers

    # -- hot-plug: not yet -------------------------------------------------------

    async def attach_disk(self, server: str, disk: DiskSpec) -> None:
        """Not supported on a remote host yet: a :class:`BusyError`."""
        raise self._no_hotplug(server)

    async def detach_disk(self, server: str, device: str) -> None:
        """Not supported on a remote host yet: a :class:`BusyError`."""
        raise self._no_hotplug(server)

    async def attach_nic(self, server: str, nic: NicSpec, network: str | None) -> None:
        """Not supported on a remote host yet: a :class:`BusyError`."""
        raise self._no_hotplug(server)

    async def detach_nic(self, server: str, index: int) -> None:
        """Not supported on a remote host yet: a :class:`BusyError`."""
        raise self._no_hotplug(server)

    async def close(self) -> None:
        """Close the connections; the guests run on."""
        await self._client.aclose()

    # -- HTTP ----------------------------------------------------------------

    async def _post(self, path: str, keys: dict[str, str] | None = None) -> httpx.Response:
        return await self._request("POST", path, keys)

    async def _request(
        self, method: str, path: str, keys: dict[str, str] | None = None
    ) -> httpx.Response:
        """One call; its error reply, or the host's silence, as our error."""
        log.debug("host %s: %s %s", self.netloc, method, path)
        try:
            response = await self._client.request(method, path, json=keys)
        except httpx.TransportError as err:
            reason = str(err) or type(err).__name__
            error = (
                HostUnreachable
                if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout)
                else HostSilent
            )
            raise error(f"host {self.netloc}: unreachable: {reason}") from err
        if response.is_success:
            return response
        raise self._error(response)

    def _error(self, response: httpx.Response) -> OvercastError:
        """The host's error reply as the error it was there."""
        message = response.text.strip()[:_MESSAGE_MAX] or response.reason_phrase
        try:
            kind = Kind(response.headers.get("x-elastic-error", ""))
        except ValueError:
            return FailedError(f"host {self.netloc} answered {response.status_code}: {message}")
        if kind is Kind.AUTH:
            return AuthError(f"host {self.netloc} refused the manager's credentials: {message}")
        if kind in (Kind.FAILED, Kind.SYSTEM):
            message = f"host {self.netloc}: {message}"
        return _ERRORS[kind](message)

    def _json(self, response: httpx.Response) -> object:
        try:
            return response.json()
        except ValueError:
            raise self._malformed(response.url.path) from None

    def _malformed(self, path: str) -> FailedError:
        return FailedError(f"host {self.netloc}: malformed reply to {path}")

    def _no_hotplug(self, server: str) -> BusyError:
        return BusyError(
            f"hot-plug on remote host {self.netloc} (server {server}) is not supported yet; "
            "stop the server to change its devices"
        )

    async def _forget(self, server: str) -> None:
        """Best effort: destroy what a start may have left on the host."""
        try:
            await self._post(f"/servers/{server}/destroy")
        except MissingError:
            pass
        except OvercastError as err:
            log.warning("host %s: cannot undo the start of %s: %s", self.netloc, server, err)


def _checked(server: str) -> str:
    """``server``, which must be a UUID to go into a path: anything else
    runs on no host (as on a local one)."""
    try:
        if str(_uuid.UUID(server)) == server:
            return server
    except ValueError:
        pass
    raise MissingError(f"server {server[:64]!r} is not running on this host")


def _maybe_sent(err: FailedError) -> bool:
    """Whether a failed call may have reached the host (its reply was lost)."""
    return isinstance(err, HostSilent)
