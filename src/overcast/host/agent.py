"""The host agent: this machine's guests, started, supervised and adopted.

It owns what runs here and nothing else: it does not know users, claims
or quotas (the manager decided those before asking). Each guest has a run
directory named after its server; QEMU is daemonized, so guests outlive
the agent, and a restarted agent adopts them from those directories.

Every guest end — power-off from inside, a kill, a crash, or an end that
happened while the agent was down — is reported exactly once per agent
run to the ``on_exit`` sink. The manager makes its processing idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from overcast.hypervisor import net
from overcast.hypervisor.qemu import GuestHandle, QemuDriver
from overcast.hypervisor.spec import GuestExit, GuestInfo, GuestSpec, VncSpec
from overcast.model.errors import BusyError, MissingError, OvercastError

__all__ = ["ExitSink", "GuestEnd", "HostAgent", "bridge_name", "tap_name"]

log = logging.getLogger(__name__)

#: The bridge of the public network.
PUBLIC_BRIDGE = "ocpub"
VNC_FIRST_DISPLAY = 100


@dataclass(frozen=True)
class GuestEnd:
    """A guest that ended: which, how and when (epoch seconds)."""

    server: str
    reason: str
    guest_initiated: bool
    at: float


ExitSink = Callable[[GuestEnd], Awaitable[None]]


def tap_name(server: str, index: int) -> str:
    """``oc`` + 10 hex digits of the server + NIC index: unique, ≤ 15 chars."""
    return f"oc{server.replace('-', '')[:10]}{index}"


def bridge_name(vlan: str | None) -> str:
    return PUBLIC_BRIDGE if vlan is None else f"ocv{vlan.replace('-', '')[:11]}"


class HostAgent:
    def __init__(
        self,
        rundir: Path,
        driver: QemuDriver,
        on_exit: ExitSink,
        *,
        vnc_listen: str = "127.0.0.1",
        networking: bool = True,
    ) -> None:
        self.rundir = rundir
        self.driver = driver
        self.on_exit = on_exit
        self.vnc_listen = vnc_listen
        self.networking = networking
        self._guests: dict[str, GuestHandle] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._specs: dict[str, GuestSpec] = {}
        rundir.mkdir(parents=True, exist_ok=True)

    # -- verbs -------------------------------------------------------------

    def running(self) -> set[str]:
        return set(self._guests)

    async def start(self, spec: GuestSpec, networks: Sequence[str | None]) -> GuestInfo:
        """Start a guest; ``networks[i]`` is NIC i's VLAN (None: public).

        Returns when it runs with every device confirmed. On failure nothing
        is left: no process, no tap, no run directory.
        """
        if spec.uuid in self._guests:
            raise BusyError(f"server {spec.uuid} already runs on this host")
        taps: list[str] = []
        try:
            nics = []
            for nic, vlan in zip(spec.nics, networks, strict=True):
                tap = tap_name(spec.uuid, len(taps))
                if self.networking:
                    await net.ensure_bridge(bridge_name(vlan))
                    await net.ensure_tap(tap, bridge=bridge_name(vlan))
                    taps.append(tap)
                    nics.append(dataclasses.replace(nic, tap=tap))
                else:
                    nics.append(nic)
            vnc = spec.vnc
            if vnc is not None:
                vnc = VncSpec(self.vnc_listen, self._free_display(), vnc.password)
            spec = dataclasses.replace(spec, nics=tuple(nics), vnc=vnc)
            guest = await self.driver.start(spec, self.rundir / spec.uuid)
        except BaseException:
            for tap in taps:
                with contextlib.suppress(OvercastError):
                    await net.remove_link(tap)
            raise
        self._track(spec.uuid, guest, spec)
        return await self.driver.info(guest)

    async def powerdown(self, server: str) -> None:
        await self.driver.powerdown(self._guest(server))

    async def stop(self, server: str) -> None:
        """Kill the guest now and wait until its exit has been reported."""
        guest = self._guest(server)
        watcher = self._watchers.get(server)
        await self.driver.stop(guest)
        if watcher is not None:
            await asyncio.shield(watcher)

    async def reset(self, server: str) -> None:
        await self.driver.reset(self._guest(server))

    async def pause(self, server: str) -> None:
        await self.driver.pause(self._guest(server))

    async def resume(self, server: str) -> None:
        await self.driver.resume(self._guest(server))

    async def info(self, server: str) -> GuestInfo:
        return await self.driver.info(self._guest(server))

    def spec(self, server: str) -> GuestSpec | None:
        return self._specs.get(server)

    # -- lifecycle ---------------------------------------------------------

    async def adopt_all(self) -> None:
        """Take back the guests a previous agent run left; report those that ended."""
        for rundir in sorted(p for p in self.rundir.iterdir() if p.is_dir()):
            server = rundir.name
            try:
                guest = await self.driver.adopt(rundir)
            except MissingError:
                ended = _last_sign_of_life(rundir)
                log.info("guest %s ended while the agent was down", server)
                await self._ended(server, GuestExit("killed", False), ended, rundir)
                continue
            except OvercastError as err:
                log.error("cannot adopt guest %s: %s", server, err)
                continue
            log.info("adopted guest %s (pid %d)", server, guest.pid)
            self._track(server, guest, None)

    async def close(self) -> None:
        """Let go of every guest without ending it (the agent is stopping)."""
        for task in self._watchers.values():
            task.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        for guest in self._guests.values():
            with contextlib.suppress(OvercastError):
                await self.driver.close(guest)
        self._guests.clear()
        self._watchers.clear()

    # -- internals ---------------------------------------------------------

    def _guest(self, server: str) -> GuestHandle:
        guest = self._guests.get(server)
        if guest is None:
            raise MissingError(f"server {server} is not running on this host")
        return guest

    def _track(self, server: str, guest: GuestHandle, spec: GuestSpec | None) -> None:
        self._guests[server] = guest
        if spec is not None:
            self._specs[server] = spec
        self._watchers[server] = asyncio.create_task(
            self._watch(server, guest), name=f"watch-{server}"
        )

    async def _watch(self, server: str, guest: GuestHandle) -> None:
        end = await self.driver.wait_exit(guest)
        self._guests.pop(server, None)
        self._specs.pop(server, None)
        await self._ended(server, end, time.time(), guest.rundir)
        self._watchers.pop(server, None)

    async def _ended(self, server: str, end: GuestExit, at: float, rundir: Path) -> None:
        if self.networking:
            for index in range(8):
                tap = tap_name(server, index)
                if await net.link(tap) is not None:
                    with contextlib.suppress(OvercastError):
                        await net.remove_link(tap)
        try:
            await self.on_exit(GuestEnd(server, end.reason, end.guest_initiated, at))
        except Exception:
            log.exception("reporting the end of guest %s failed; kept for the next run", server)
            return
        # Reported: the run directory has served its purpose.
        shutil.rmtree(rundir, ignore_errors=True)

    def _free_display(self) -> int:
        used = {s.vnc.display for s in self._specs.values() if s.vnc is not None}
        display = VNC_FIRST_DISPLAY
        while display in used:
            display += 1
        return display


def _last_sign_of_life(rundir: Path) -> float:
    """When a guest that ended unseen was last alive: its files' newest mtime."""
    times = [p.stat().st_mtime for p in rundir.iterdir() if p.is_file()]
    return max(times, default=rundir.stat().st_mtime)
