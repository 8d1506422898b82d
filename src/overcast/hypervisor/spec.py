"""The typed nouns of the hypervisor layer: what a guest should be, and what it is.

A :class:`GuestSpec` is everything the QEMU driver needs to start one guest:
the host layer builds it from the server record (drive UUIDs already turned
into image paths, taps already created) and the driver never looks at the
store. Specs check themselves when built, so an impossible spec cannot
exist: bad values, two devices at one address, one MAC or tap twice, one
image twice, two devices with one boot index. Limits of the machine type
(how many IDE ports q35 has, how many PCI slots) are QEMU's business and are
checked in :mod:`overcast.hypervisor.argv`.

The results of the driver's verbs (:class:`GuestInfo`, :class:`GuestExit`)
live here too, so that callers import every type from one module.

Not here: the API's keys and user-facing ranges (``overcast.model``), and
anything about running processes (``overcast.hypervisor.qemu``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import uuid as _uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from overcast.hypervisor.net import check_ifname
from overcast.model.errors import UsageError

__all__ = [
    "Accel",
    "Bus",
    "DiskSpec",
    "DiskStats",
    "GuestExit",
    "GuestInfo",
    "GuestSpec",
    "ImageFormat",
    "Media",
    "NicModel",
    "NicSpec",
    "NicStats",
    "VncSpec",
]

Accel = Literal["kvm", "tcg"]
Bus = Literal["ide", "scsi", "virtio"]
Media = Literal["disk", "cdrom"]
NicModel = Literal["e1000", "rtl8139", "virtio"]
ImageFormat = Literal["raw", "qcow2"]

_BUSES = ("ide", "scsi", "virtio")
_MEDIA = ("disk", "cdrom")
_MODELS = ("e1000", "rtl8139", "virtio")
_FORMATS = ("raw", "qcow2")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
#: The tap of NIC N ends in the digit N.
_MAX_NIC_INDEX = 9
#: The VNC protocol's DES challenge uses at most 8 characters of a password.
VNC_PASSWORD_MAX = 8


@dataclass(frozen=True)
class DiskSpec:
    """One block device: an image file on a bus.

    ``bus_no``/``unit`` are the numbers of the API's device name: ``ide:B:U``
    is ``("ide", B, U)``, ``scsi:0:U`` is ``("scsi", 0, U)`` and ``block:N``
    is ``("virtio", 0, N)``. ``shared`` lets other guests write the same
    image at the same time (QEMU's ``share-rw``); otherwise QEMU's image lock
    refuses a second writer. A ``cdrom`` is always read-only.
    """

    image: Path
    bus: Bus
    bus_no: int
    unit: int
    media: Media = "disk"
    bootindex: int | None = None
    shared: bool = False
    format: ImageFormat = "raw"

    def __post_init__(self) -> None:
        if self.bus not in _BUSES:
            raise UsageError(f"unknown disk bus {self.bus!r}; use one of {', '.join(_BUSES)}")
        if self.media not in _MEDIA:
            raise UsageError(f"unknown media {self.media!r}; use disk or cdrom")
        if self.format not in _FORMATS:
            raise UsageError(f"unknown image format {self.format!r}")
        if self.bus_no < 0 or self.unit < 0:
            raise UsageError(f"{self.name}: bus and unit numbers cannot be negative")
        if self.bus == "virtio" and self.bus_no != 0:
            raise UsageError(f"virtio disks have no bus number (got {self.bus_no})")
        if self.bootindex is not None and self.bootindex < 0:
            raise UsageError(f"{self.name}: boot index cannot be negative")
        # QEMU changes its directory to / when it daemonizes.
        if not self.image.is_absolute():
            raise UsageError(f"{self.name}: image path {self.image} is not absolute")

    @property
    def name(self) -> str:
        """The API's device name, e.g. ``ide:0:1``, ``scsi:0:2``, ``block:3``."""
        if self.bus == "virtio":
            return f"block:{self.unit}"
        return f"{self.bus}:{self.bus_no}:{self.unit}"

    @property
    def readonly(self) -> bool:
        return self.media == "cdrom"


@dataclass(frozen=True)
class NicSpec:
    """One network card. ``tap`` None gives a card with no host side (link down).

    ``index`` is the API's N of ``nic:N``: it names the card's QEMU device
    and its tap, so that one NIC can be hot-plugged or removed without
    renaming the others. In a :class:`GuestSpec` a NIC without one gets its
    position in the list.
    """

    model: NicModel
    mac: str
    tap: str | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.model not in _MODELS:
            raise UsageError(f"unknown NIC model {self.model!r}; use one of {', '.join(_MODELS)}")
        mac = self.mac.strip().lower().replace("-", ":")
        if not _MAC.fullmatch(mac):
            raise UsageError(f"{self.mac!r} is not a MAC address")
        if int(mac[:2], 16) & 1:
            raise UsageError(f"{self.mac}: a NIC needs a unicast MAC address")
        if mac == "00:00:00:00:00:00":
            raise UsageError("the all-zero MAC address is not allowed")
        object.__setattr__(self, "mac", mac)
        if self.tap is not None:
            check_ifname(self.tap)
        if self.index is not None and not 0 <= self.index <= _MAX_NIC_INDEX:
            raise UsageError(f"NIC index {self.index} is out of range (0 to {_MAX_NIC_INDEX})")

    @property
    def slot(self) -> int:
        """``index``, which every NIC of a :class:`GuestSpec` has."""
        if self.index is None:
            raise UsageError(f"NIC {self.mac} has no index")
        return self.index


@dataclass(frozen=True)
class VncSpec:
    """A VNC server on ``listen`` at ``5900 + display``.

    The password never goes on QEMU's command line (``ps`` would show it):
    the driver sets it over QMP before the guest runs. VNC uses at most
    eight characters of it.
    """

    listen: str
    display: int
    password: str | None = None

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.listen)
        except ValueError as err:
            raise UsageError(f"VNC listen address {self.listen!r} is not an IP address") from err
        if not 0 <= self.display <= 65535 - 5900:
            raise UsageError(f"VNC display {self.display} is out of range")
        if self.password is not None and not 1 <= len(self.password) <= VNC_PASSWORD_MAX:
            raise UsageError(f"a VNC password has 1 to {VNC_PASSWORD_MAX} characters")

    @property
    def port(self) -> int:
        return 5900 + self.display


@dataclass(frozen=True)
class GuestSpec:
    """Everything needed to start one guest. ``cpu_mhz`` is carried for the
    host layer's CPU-time limit; QEMU itself has no such knob."""

    uuid: str
    name: str
    smp: int
    mem_mib: int
    cpu_mhz: int
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    vnc: VncSpec | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "uuid", str(_uuid.UUID(self.uuid)))
        except ValueError as err:
            raise UsageError(f"{self.uuid!r} is not a UUID") from err
        if not 1 <= self.smp <= 255:
            raise UsageError(f"smp {self.smp} is out of range (1 to 255)")
        if self.mem_mib < 16:
            raise UsageError(f"{self.mem_mib} MiB is too little memory for a guest")
        if self.cpu_mhz < 0:
            raise UsageError("cpu cannot be negative")
        _unique("disk", [d.name for d in self.disks])
        _unique("image", [str(d.image) for d in self.disks])
        _unique("boot index", [d.bootindex for d in self.disks if d.bootindex is not None])
        nics = tuple(
            nic if nic.index is not None else dataclasses.replace(nic, index=position)
            for position, nic in enumerate(self.nics)
        )
        object.__setattr__(self, "nics", nics)
        _unique("NIC index", [n.slot for n in nics])
        _unique("MAC address", [n.mac for n in self.nics])
        _unique("tap", [n.tap for n in self.nics if n.tap is not None])


def _unique(what: str, values: list[str] | list[int]) -> None:
    seen: set[str | int] = set()
    for value in values:
        if value in seen:
            raise UsageError(f"{what} {value} is used twice in one guest")
        seen.add(value)


@dataclass(frozen=True)
class DiskStats:
    """One block device as QEMU sees it, with its I/O counters since start."""

    device: str
    image: str
    readonly: bool
    read_bytes: int
    write_bytes: int
    read_requests: int
    write_requests: int


@dataclass(frozen=True)
class NicStats:
    """One network card; counters are the guest's view (its rx is the tap's tx).

    Counters are None when the card has no tap or the tap is not visible
    from this network namespace.
    """

    device: str
    model: str
    mac: str
    tap: str | None
    rx_bytes: int | None
    tx_bytes: int | None
    rx_packets: int | None
    tx_packets: int | None


@dataclass(frozen=True)
class GuestInfo:
    """A running guest as QEMU reports it now. ``status`` is QMP's RunState
    (``running``, ``paused``, ``prelaunch``, ...)."""

    uuid: str
    name: str
    pid: int
    status: str
    running: bool
    disks: tuple[DiskStats, ...]
    nics: tuple[NicStats, ...]


@dataclass(frozen=True)
class GuestExit:
    """How a guest ended.

    ``reason`` is QEMU's SHUTDOWN reason (``guest-shutdown`` for a power-off
    from inside, ``host-qmp-quit``, ``host-signal``, ...) or ``killed`` when
    the process ended without one (kill -9, a crash). ``guest_initiated`` is
    True when the guest itself asked to stop.
    """

    reason: str
    guest_initiated: bool
