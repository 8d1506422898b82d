"""QEMU's command line for a :class:`GuestSpec`: one pure function and its names.

:func:`qemu_argv` turns a spec into the argument list of
``qemu-system-x86_64``; it touches nothing, so it is tested alone and the
benchmark can spawn exactly what the driver spawns. The device ids and
drivers it chooses are exported (:func:`disk_id`, :func:`disk_driver`,
:func:`nic_id`, :func:`nic_driver`) so that the driver checks over QMP the
very devices this module asked for.

The machine:

* ``q35``, started paused (``-S``) and daemonized with a pidfile, so QEMU is
  not overcast's child and outlives an overcast restart. ``-nodefaults
  -no-user-config``: only the devices listed here exist.
* QMP on a unix socket, the serial console to a file and QEMU's own messages
  (``-D``, which also keeps stderr after daemonizing) to a file, all in the
  run directory (:class:`RunFiles`).
* ``ide:B:U`` goes to q35's built-in AHCI controller. It has six ports,
  ``ide.0`` to ``ide.5``, each with a single unit, so ``B:U`` maps to port
  ``B*2+U``: ``ide:0:0``..``ide:2:1`` exist, like three IDE buses of two.
* ``scsi:0:U`` goes to one ``virtio-scsi-pci`` controller (``scsi0``), target
  ``U``, LUN 0. ``block:N`` is a ``virtio-blk-pci`` device.
* Hot-plug: q35's root bus takes no hot-plugged device, so every guest gets
  :data:`HOTPLUG_PORTS` empty ``pcie-root-port`` devices (``hp0``, ...), the
  functions of one slot (``0x1e``), each the home of one hot-plugged PCI
  device (a ``block:N`` or a NIC). The SCSI controller is always there, so
  that ``scsi:0:U`` disks can be hot-plugged onto it. AHCI has no hot-plug.
  The pure builders of each device (:func:`disk_blockdev`,
  :func:`disk_device`, :func:`nic_netdev`, :func:`nic_device`) serve the
  command line and the driver's ``device_add`` alike.
* Images are opened with ``-blockdev`` (JSON, so any path is safe) with
  QEMU's image locking left on: it is our second guard against one image
  running twice. ``shared`` disks set ``share-rw`` so that several guests
  may write them; ``cdrom`` media are read-only.
* NICs: ``-netdev tap`` on an existing tap (``script=no``) and the model's
  device with the MAC. ``virtio`` is ``virtio-net-pci``.
* VNC (with a VGA card) when asked; its password is set over QMP later.

Not here: spawning, QMP, taps and bridges.
"""

from __future__ import annotations

import itertools
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from overcast.hypervisor.spec import Accel, DiskSpec, GuestSpec, NicModel, NicSpec
from overcast.model.errors import FailedError, UsageError

__all__ = [
    "HOTPLUG_PORTS",
    "IDE_PORTS",
    "PCI_SLOTS",
    "QEMU",
    "SCSI_CONTROLLER",
    "SCSI_TARGETS",
    "RunFiles",
    "accel_argv",
    "describe",
    "disk_blockdev",
    "disk_device",
    "disk_driver",
    "disk_id",
    "disk_ids",
    "hotplug_ports",
    "netdev_id",
    "nic_device",
    "nic_driver",
    "nic_id",
    "nic_netdev",
    "qemu_argv",
    "qmp_chardev",
    "taps_from_argv",
]

QEMU = "qemu-system-x86_64"
#: Ports of q35's AHCI controller (ide.0 .. ide.5), one unit each.
IDE_PORTS = 6
#: Targets of one virtio-scsi controller.
SCSI_TARGETS = 256
#: Free slots on q35's root bus: 32, less the host bridge (0) and ICH9 (31).
PCI_SLOTS = 30
#: Empty PCIe root ports each guest gets for hot-plugged PCI devices.
HOTPLUG_PORTS = 4
#: The root-bus slot whose functions are the hot-plug ports.
_HOTPLUG_SLOT = 0x1E
#: The virtio-scsi controller every guest has; its bus is ``scsi0.0``.
SCSI_CONTROLLER = "scsi0"
#: sun_path of a unix socket holds 108 bytes, the final NUL included.
_SUN_PATH = 107

_NIC_DRIVERS: dict[NicModel, str] = {
    "e1000": "e1000",
    "rtl8139": "rtl8139",
    "virtio": "virtio-net-pci",
}


@dataclass(frozen=True)
class RunFiles:
    """The files of one guest in its run directory (an absolute path)."""

    rundir: Path

    @classmethod
    def at(cls, rundir: Path) -> RunFiles:
        """The files of ``rundir``, made absolute (QEMU runs in ``/``)."""
        return cls(rundir.absolute())

    @property
    def qmp(self) -> Path:
        return self.rundir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.rundir / "qemu.pid"

    @property
    def serial(self) -> Path:
        return self.rundir / "serial.log"

    @property
    def log(self) -> Path:
        return self.rundir / "qemu.log"

    @property
    def runtime(self) -> tuple[Path, ...]:
        """Files that only mean something while QEMU runs."""
        return (self.qmp, self.pidfile)

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.qmp, self.pidfile, self.serial, self.log)


def disk_id(disk: DiskSpec) -> str:
    """QEMU device id of a disk: ``drive-ide-0-1``, ``drive-scsi-0-2``, ``drive-block-3``."""
    return disk_ids(disk.name)[0]


def disk_ids(name: str) -> tuple[str, str]:
    """(device id, block node name) of the disk on the API's device ``name``."""
    tail = name.replace(":", "-")
    return "drive-" + tail, "node-" + tail


def disk_driver(disk: DiskSpec) -> str:
    """The QEMU device type of a disk (what ``qom-get ... type`` answers)."""
    if disk.bus == "ide":
        return "ide-cd" if disk.readonly else "ide-hd"
    if disk.bus == "scsi":
        return "scsi-cd" if disk.readonly else "scsi-hd"
    return "virtio-blk-pci"


def nic_id(index: int) -> str:
    """QEMU device id of the API's ``nic:N``."""
    return f"nic{index}"


def netdev_id(index: int) -> str:
    """QEMU netdev id (the host side) of the API's ``nic:N``."""
    return f"net{index}"


def hotplug_ports() -> tuple[str, ...]:
    """Device ids of the hot-plug root ports; each one's bus has the same name."""
    return tuple(f"hp{i}" for i in range(HOTPLUG_PORTS))


def nic_driver(model: NicModel) -> str:
    return _NIC_DRIVERS[model]


def accel_argv(accel: Accel) -> list[str]:
    """Accelerator and CPU model. KVM passes the host CPU through; TCG
    emulates every feature it can (``max``), with one host thread per vCPU."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise UsageError(f"unknown accelerator {accel!r}")


def qemu_argv(spec: GuestSpec, rundir: Path, accel: Accel) -> list[str]:
    """The full argument list, program name first, for ``spec`` in ``rundir``.

    Raises :class:`UsageError` for a spec this machine cannot have (IDE port
    past ``ide:2:1``, a SCSI bus other than 0, too many PCI devices) and
    :class:`FailedError` when ``rundir`` is unusable (relative, or too long
    for a unix socket).
    """
    files = _files(rundir)
    args = [
        QEMU,
        "-name", f"guest={_kv(spec.name)},debug-threads=on",
        "-uuid", spec.uuid,
        "-nodefaults",
        "-no-user-config",
        "-machine", "q35",
        *accel_argv(accel),
        "-smp", str(spec.smp),
        "-m", str(spec.mem_mib),
        "-display", "none",
        "-S",
        "-daemonize",
        "-pidfile", str(files.pidfile),
        "-D", str(files.log),
        "-msg", "timestamp=on",
        "-chardev", qmp_chardev(files),
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"file,id=serial0,path={_kv(str(files.serial))}",
        "-serial", "chardev:serial0",
    ]  # fmt: skip
    # First, so that no device placed automatically takes their slot.
    args += _hotplug_ports_argv()
    args += _disks_argv(spec.disks)
    args += _nics_argv(spec)
    if spec.vnc is not None:
        host = spec.vnc.listen if ":" not in spec.vnc.listen else f"[{spec.vnc.listen}]"
        vnc = f"{host}:{spec.vnc.display}"
        if spec.vnc.password is not None:
            vnc += ",password=on"
        args += ["-vnc", vnc, "-device", _json({"driver": "VGA", "id": "video0"})]
    pci = (
        1  # the hot-plug ports' slot
        + 1  # the SCSI controller
        + sum(d.bus == "virtio" for d in spec.disks)
        + len(spec.nics)
        + (spec.vnc is not None)
    )
    if pci > PCI_SLOTS:
        raise UsageError(f"too many PCI devices ({pci}); a guest has {PCI_SLOTS} slots")
    return args


def qmp_chardev(files: RunFiles) -> str:
    """The ``-chardev`` value of the QMP socket; it also tells an adopted QEMU
    apart from an unrelated process that took over a stale pid."""
    return f"socket,id=qmp,path={_kv(str(files.qmp))},server=on,wait=off"


def _files(rundir: Path) -> RunFiles:
    if not rundir.is_absolute():
        raise FailedError(f"run directory {rundir} is not absolute")
    files = RunFiles(rundir)
    if len(str(files.qmp).encode()) > _SUN_PATH:
        raise FailedError(f"run directory {rundir} is too long for a unix socket path")
    return files


def _hotplug_ports_argv() -> list[str]:
    args: list[str] = []
    for function, port in enumerate(hotplug_ports()):
        device: dict[str, object] = {
            "driver": "pcie-root-port",
            "id": port,
            "bus": "pcie.0",
            "addr": f"{_HOTPLUG_SLOT:#x}.{function:#x}",
            # Each port is a slot of a chassis of its own (QEMU wants the pair unique).
            "chassis": function + 1,
        }
        if function == 0:
            device["multifunction"] = True
        args += ["-device", _json(device)]
    return args


def _disks_argv(disks: tuple[DiskSpec, ...]) -> list[str]:
    args = ["-device", _json({"driver": "virtio-scsi-pci", "id": SCSI_CONTROLLER})]
    for disk in disks:
        args += ["-blockdev", _json(disk_blockdev(disk)), "-device", _json(disk_device(disk))]
    return args


def disk_blockdev(disk: DiskSpec) -> dict[str, object]:
    """The ``-blockdev`` (or ``blockdev-add``) of a disk's image."""
    return {
        "node-name": disk_ids(disk.name)[1],
        "driver": disk.format,
        "read-only": disk.readonly,
        "discard": "unmap",
        "file": {"driver": "file", "filename": str(disk.image), "discard": "unmap"},
    }


def disk_device(disk: DiskSpec, *, port: str | None = None) -> dict[str, object]:
    """The ``-device`` (or ``device_add``) of a disk; ``port`` puts a virtio
    disk on a hot-plug port rather than the root bus.

    Raises :class:`UsageError` for an address q35 does not have.
    """
    device_id, node = disk_ids(disk.name)
    device: dict[str, object] = {
        "driver": disk_driver(disk),
        "id": device_id,
        "drive": node,
        **_disk_address(disk),
    }
    if port is not None and disk.bus == "virtio":
        device["bus"] = port
    if disk.shared:
        device["share-rw"] = True
    if disk.bootindex is not None:
        device["bootindex"] = disk.bootindex
    return device


def _disk_address(disk: DiskSpec) -> dict[str, object]:
    if disk.bus == "ide":
        if disk.unit > 1:
            raise UsageError(f"{disk.name}: an IDE bus has units 0 and 1")
        port = disk.bus_no * 2 + disk.unit
        if port >= IDE_PORTS:
            raise UsageError(f"{disk.name}: IDE buses are 0 to {IDE_PORTS // 2 - 1}")
        return {"bus": f"ide.{port}"}
    if disk.bus == "scsi":
        if disk.bus_no != 0:
            raise UsageError(f"{disk.name}: there is one SCSI bus, scsi:0")
        if disk.unit >= SCSI_TARGETS:
            raise UsageError(f"{disk.name}: SCSI units are 0 to {SCSI_TARGETS - 1}")
        return {"bus": f"{SCSI_CONTROLLER}.0", "channel": 0, "scsi-id": disk.unit, "lun": 0}
    return {}


def _nics_argv(spec: GuestSpec) -> list[str]:
    args: list[str] = []
    for nic in spec.nics:
        if nic.tap is not None:
            netdev = netdev_id(nic.slot)
            args += ["-netdev", f"tap,id={netdev},ifname={nic.tap},script=no,downscript=no"]
        args += ["-device", _json(nic_device(nic))]
    return args


def nic_netdev(nic: NicSpec) -> dict[str, object]:
    """The ``netdev_add`` arguments of a NIC's tap (it must have one)."""
    if nic.tap is None:
        raise UsageError(f"nic:{nic.slot} has no tap")
    return {
        "type": "tap",
        "id": netdev_id(nic.slot),
        "ifname": nic.tap,
        "script": "no",
        "downscript": "no",
    }


def nic_device(nic: NicSpec, *, port: str | None = None) -> dict[str, object]:
    """The ``-device`` (or ``device_add``) of a NIC, on a hot-plug ``port`` if given."""
    device: dict[str, object] = {"driver": nic_driver(nic.model), "id": nic_id(nic.slot)}
    if port is not None:
        device["bus"] = port
    if nic.tap is not None:
        device["netdev"] = netdev_id(nic.slot)
    device["mac"] = nic.mac
    return device


def taps_from_argv(argv: list[str]) -> dict[str, str]:
    """NIC device id → tap name, read back from a command line built here.

    QMP cannot tell a tap's name; an adopted guest's command line can.
    """
    netdevs: dict[str, str] = {}
    taps: dict[str, str] = {}
    for option, value in itertools.pairwise(argv):
        if option == "-netdev" and value.startswith("tap,"):
            fields = dict(f.split("=", 1) for f in value.split(",")[1:] if "=" in f)
            if "id" in fields and "ifname" in fields:
                netdevs[fields["id"]] = fields["ifname"]
        elif option == "-device" and value.startswith("{"):
            device = json.loads(value)
            if isinstance(device, dict) and device.get("netdev") in netdevs:
                taps[str(device["id"])] = netdevs[device["netdev"]]
    return taps


def _json(value: dict[str, object]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _kv(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` syntax (a comma is doubled)."""
    return value.replace(",", ",,")


def describe(argv: list[str]) -> str:
    """The command line as a shell would take it, for logs."""
    return shlex.join(argv)
