"""One supervised QEMU: its process (through a pidfd) and its QMP connection.

A :class:`GuestHandle` is what :class:`overcast.hypervisor.qemu.QemuDriver`
hands out and takes back. Its methods are the driver's tools, not the
interface for the layers above (those use the driver's verbs): run one QMP
command with a timeout and our error kinds, kill, notice the end, clean up
once, or let go without ending the guest.

The end of a guest is seen two ways at once. The pidfd becomes readable
when the process ends, however it ends; QMP's ``SHUTDOWN`` event, heard by a
listener registered as soon as the connection exists, says why. A process
that ended without one was killed (or crashed).

Not here: what to start and how to check it (``overcast.hypervisor.qemu``),
spawning and finding processes (``overcast.hypervisor.process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError, Runstate

from overcast.hypervisor.argv import RunFiles, taps_from_argv
from overcast.hypervisor.process import cmdline
from overcast.hypervisor.spec import GuestExit
from overcast.model.errors import FailedError, SystemFault

__all__ = ["GuestHandle", "GuestLostError", "JsonDict", "as_dict", "as_int", "as_list"]

log = logging.getLogger(__name__)

#: How long a dying QEMU may take to flush its last QMP messages (SHUTDOWN).
_DRAIN = 0.5

JsonDict = dict[str, object]


class GuestLostError(FailedError):
    """The connection to QEMU broke or timed out; the guest has probably ended."""


class GuestHandle:
    """One QEMU process and its QMP connection. Made by :meth:`connect` only.

    ``uuid``, ``name``, ``pid`` and ``rundir`` are facts read from QEMU.
    """

    def __init__(
        self,
        *,
        pid: int,
        pidfd: int,
        files: RunFiles,
        client: QMPClient,
        timeout: float,
    ) -> None:
        self.uuid = files.rundir.name
        self.name = ""
        self.pid = pid
        self.rundir = files.rundir
        self.log = log.getChild(self.uuid)
        self.taps: Mapping[str, str] = taps_from_argv(cmdline(pid))
        self._files = files
        self._pidfd = pidfd
        self._client = client
        self._timeout = timeout
        # Subscribed before anything can make QEMU shut down.
        self._shutdowns = EventListener("SHUTDOWN")
        client.register_listener(self._shutdowns)
        self._gone = asyncio.Event()
        self._ender: asyncio.Future[GuestExit] | None = None
        self._closed = False
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit)

    @classmethod
    async def connect(
        cls, files: RunFiles, pid: int, pidfd: int, *, label: str, limit: float
    ) -> GuestHandle:
        """Connect to the QMP socket of QEMU ``pid``; the handle then owns ``pidfd``
        (closed here if connecting fails). ``limit`` is the seconds each QMP
        step may take, this one included."""
        client = QMPClient(label)
        try:
            try:
                async with asyncio.timeout(limit):
                    await client.connect(str(files.qmp))
            except (TimeoutError, QMPError, OSError) as err:
                raise GuestLostError(
                    f"QEMU pid {pid} does not answer on {files.qmp}: {err or 'timeout'}"
                ) from err
            guest = cls(pid=pid, pidfd=pidfd, files=files, client=client, timeout=limit)
        except BaseException:
            os.close(pidfd)
            if client.runstate != Runstate.IDLE:
                with contextlib.suppress(QMPError, OSError, EOFError):
                    await client.disconnect()
            raise
        try:
            uuid, name = await asyncio.gather(guest.qmp("query-uuid"), guest.qmp("query-name"))
        except BaseException:
            await guest.close()
            raise
        guest.uuid = str(as_dict(uuid).get("UUID", label))
        guest.name = str(as_dict(name).get("name", ""))
        guest.log = log.getChild(guest.uuid)
        return guest

    def __repr__(self) -> str:
        return f"<GuestHandle {self.uuid} pid={self.pid} {self.rundir}>"

    @property
    def exited(self) -> bool:
        """True once the QEMU process has ended."""
        return self._gone.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def serial_log(self) -> Path:
        return self._files.serial

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self._gone.set()

    def kill(self) -> None:
        """Send SIGKILL (through the pidfd, so never to a reused pid)."""
        self._check_open()
        if self._gone.is_set():
            return  # its pidfd may be closed and the number reused
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def wait_gone(self) -> None:
        """Wait until the process has ended (nothing is cleaned up yet)."""
        await self._gone.wait()

    async def qmp(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run one QMP command within the timeout; translate qemu.qmp's errors into ours."""
        self._check_open()
        if self._gone.is_set():
            raise GuestLostError(f"QEMU of guest {self.uuid} has exited")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._client.execute(command, arguments)
        except ExecuteError as err:
            raise FailedError(f"QEMU refused {command}: {err}") from err
        except TimeoutError as err:
            raise GuestLostError(
                f"QEMU of guest {self.uuid} did not answer {command} in {self._timeout} s"
            ) from err
        except (QMPError, OSError, EOFError) as err:
            raise GuestLostError(f"lost QEMU of guest {self.uuid} during {command}") from err

    async def finish(self) -> GuestExit:
        """Wait for the process to end, then clean up and tell how it ended.

        The clean-up (QMP closed, pidfd closed, runtime files removed) runs
        once, in a task of its own, so a cancelled waiter cannot leave it
        half done; every caller gets the same answer.
        """
        self._check_open()
        await self._gone.wait()
        if self._ender is None:
            self._ender = asyncio.ensure_future(self._end())
        return await asyncio.shield(self._ender)

    async def close(self) -> None:
        """Let go of the guest without ending it: QEMU runs on, to be adopted later."""
        if self._closed or self._ender is not None:
            return
        self._closed = True
        if not self._gone.is_set():
            asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        await self._disconnect()

    def _check_open(self) -> None:
        if self._closed:
            raise SystemFault(f"guest {self.uuid}: handle is closed")

    async def _end(self) -> GuestExit:
        # Let the reader take what QEMU wrote before it died (SHUTDOWN).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN):
                while self._client.runstate == Runstate.RUNNING:
                    await self._client.runstate_changed()
        await self._disconnect()
        os.close(self._pidfd)
        for path in self._files.runtime:
            path.unlink(missing_ok=True)
        end = _exit_reason(self._shutdowns.history)
        self.log.info("QEMU pid %d ended: %s", self.pid, end.reason)
        return end

    async def _disconnect(self) -> None:
        try:
            await self._client.disconnect()
        except (QMPError, OSError, EOFError) as err:
            # The reader's error once QEMU hung up: expected when it died.
            self.log.debug("QMP connection ended: %r", err)


def _exit_reason(events: tuple[object, ...]) -> GuestExit:
    for event in reversed(events):
        data = as_dict(as_dict(event).get("data", {}))
        if "reason" in data:
            return GuestExit(str(data["reason"]), bool(data.get("guest", False)))
    return GuestExit("killed", False)


def as_dict(value: object) -> JsonDict:
    """A QMP JSON object (a dict or qemu.qmp's ``Message``) as a dict; {} otherwise."""
    if hasattr(value, "__getitem__") and hasattr(value, "items"):
        return dict(cast(Mapping[str, object], value))
    return {}


def as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def as_int(value: object) -> int:
    return value if isinstance(value, int) else 0
