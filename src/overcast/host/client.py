"""How the manager reaches a host: the :class:`HostClient` seam.

The manager (``overcast.cluster``) asks a host for guests only through
:class:`HostClient`, a flat list of verbs on servers, and never knows which
implementation it holds: :class:`LocalHost` calls a :class:`HostAgent` in
this process (the all-in-one cloud); ``RemoteHost`` speaks HTTP to a host
agent elsewhere. Like httpx's transport, it is one narrow interface so that
everything above it is the same for one machine and for many.

Guest ends do not come through here: they reach the manager through the
``on_exit`` sink the agent was built with (in-process) or a callback (remote).
A verb on a server that does not run on the host raises
:class:`overcast.model.errors.MissingError`; starting one that runs already,
:class:`overcast.model.errors.BusyError`.

Not here: the agent itself (:mod:`overcast.host.agent`), the HTTP client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from overcast.host.agent import HostAgent, RunningGuest
from overcast.hypervisor.spec import DiskSpec, GuestSpec, NicSpec

__all__ = ["HostClient", "LocalHost"]


class HostClient(Protocol):
    """The verbs the manager may ask of one host."""

    async def start(self, spec: GuestSpec, networks: Sequence[str | None]) -> RunningGuest:
        """Start ``spec`` with NIC i on VLAN ``networks[i]`` (None: the public
        network); return once it runs with every device confirmed. A failure
        leaves nothing on the host."""
        ...

    async def powerdown(self, server: str) -> None:
        """Press the guest's ACPI power button; its end, if any, is reported."""
        ...

    async def stop(self, server: str) -> None:
        """Kill the guest; return once its end has been reported."""
        ...

    async def reset(self, server: str) -> None:
        """Hard reset: the guest reboots at once."""
        ...

    async def pause(self, server: str) -> None: ...

    async def resume(self, server: str) -> None: ...

    async def update(
        self, server: str, *, cpu_mhz: int | None = None, vnc_password: str | None = None
    ) -> None:
        """Apply a new CPU quota or console password to a running guest."""
        ...

    async def info(self, server: str) -> RunningGuest:
        """The guest's state, devices and counters now."""
        ...

    async def attach_disk(self, server: str, disk: DiskSpec) -> None:
        """Hot-plug ``disk`` (``scsi`` or ``virtio``; IDE cannot be, a
        :class:`~overcast.model.errors.BusyError`) into the running guest;
        return once QEMU has it. A failure leaves the guest as it was."""
        ...

    async def detach_disk(self, server: str, device: str) -> None:
        """Hot-unplug the disk on the API's ``device`` name; return once it
        and its image are gone. A guest that keeps a PCI device (no OS to
        release it) is a :class:`~overcast.model.errors.BusyError`."""
        ...

    async def attach_nic(self, server: str, nic: NicSpec, network: str | None) -> None:
        """Hot-plug NIC ``nic.index`` on ``network`` (a VLAN; None: the
        public network); return once QEMU has it on a tap on that network."""
        ...

    async def detach_nic(self, server: str, index: int) -> None:
        """Hot-unplug NIC ``index`` and remove its tap."""
        ...

    async def running(self) -> set[str]:
        """The servers whose guests run on the host now."""
        ...

    async def close(self) -> None:
        """Let go of the host; its guests keep running."""
        ...


class LocalHost(HostClient):
    """The host agent of this process, as a :class:`HostClient`.

    It adds nothing: every verb is the agent's, so that the all-in-one
    cloud pays no more than a method call for the seam.
    """

    def __init__(self, agent: HostAgent) -> None:
        self.agent = agent

    async def start(self, spec: GuestSpec, networks: Sequence[str | None]) -> RunningGuest:
        return await self.agent.start(spec, networks)

    async def powerdown(self, server: str) -> None:
        await self.agent.powerdown(server)

    async def stop(self, server: str) -> None:
        await self.agent.stop(server)

    async def reset(self, server: str) -> None:
        await self.agent.reset(server)

    async def pause(self, server: str) -> None:
        await self.agent.pause(server)

    async def resume(self, server: str) -> None:
        await self.agent.resume(server)

    async def update(
        self, server: str, *, cpu_mhz: int | None = None, vnc_password: str | None = None
    ) -> None:
        await self.agent.update(server, cpu_mhz=cpu_mhz, vnc_password=vnc_password)

    async def info(self, server: str) -> RunningGuest:
        return await self.agent.info(server)

    async def attach_disk(self, server: str, disk: DiskSpec) -> None:
        await self.agent.attach_disk(server, disk)

    async def detach_disk(self, server: str, device: str) -> None:
        await self.agent.detach_disk(server, device)

    async def attach_nic(self, server: str, nic: NicSpec, network: str | None) -> None:
        await self.agent.attach_nic(server, nic, network)

    async def detach_nic(self, server: str, index: int) -> None:
        await self.agent.detach_nic(server, index)

    async def running(self) -> set[str]:
        return self.agent.running()

    async def close(self) -> None:
        await self.agent.close()
