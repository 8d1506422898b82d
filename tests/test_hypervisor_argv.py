"""QEMU's command line from a guest spec: the pure function, every device kind,
and the specs that cannot exist."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from overcast.hypervisor.argv import (
    PCI_SLOTS,
    RunFiles,
    accel_argv,
    disk_id,
    qemu_argv,
    qmp_chardev,
    taps_from_argv,
)
from overcast.hypervisor.spec import DiskSpec, GuestSpec, NicSpec, VncSpec
from overcast.model.errors import FailedError, UsageError

UUID = "6f1c1d3e-2b1a-4f7e-9a55-0d7e3a1b2c3d"
RUN = Path("/run/overcast/guests/g1")


def _spec(**kw: object) -> GuestSpec:
    fields: dict[str, object] = {
        "uuid": UUID,
        "name": "web",
        "smp": 2,
        "mem_mib": 512,
        "cpu_mhz": 1000,
    }
    fields.update(kw)
    return GuestSpec(**fields)  # type: ignore[arg-type]


def _disk(bus: str, bus_no: int, unit: int, **kw: object) -> DiskSpec:
    image = Path(f"/data/drives/{bus}-{bus_no}-{unit}.img")
    return DiskSpec(image, bus, bus_no, unit, **kw)  # type: ignore[arg-type]


def _values(argv: list[str], option: str) -> list[str]:
    return [v for o, v in itertools.pairwise(argv) if o == option]


def _devices(argv: list[str]) -> dict[str, dict[str, object]]:
    parsed = [json.loads(v) for v in _values(argv, "-device")]
    return {str(d["id"]): d for d in parsed}


def _blockdevs(argv: list[str]) -> dict[str, dict[str, object]]:
    parsed = [json.loads(v) for v in _values(argv, "-blockdev")]
    return {str(b["node-name"]): b for b in parsed}


def test_machine_is_q35_paused_daemonized_with_qmp_and_serial_in_rundir() -> None:
    argv = qemu_argv(_spec(), RUN, "tcg")
    assert argv[0] == "qemu-system-x86_64"
    for flag in ("-S", "-daemonize", "-nodefaults", "-no-user-config"):
        assert flag in argv
    assert _values(argv, "-machine") == ["q35"]
    assert _values(argv, "-pidfile") == [str(RUN / "qemu.pid")]
    assert _values(argv, "-uuid") == [UUID]
    assert _values(argv, "-smp") == ["2"]
    assert _values(argv, "-m") == ["512"]
    files = RunFiles(RUN)
    assert qmp_chardev(files) in _values(argv, "-chardev")
    assert f"path={RUN}/qmp.sock" in qmp_chardev(files)
    assert _values(argv, "-mon") == ["chardev=qmp,mode=control"]
    assert f"file,id=serial0,path={RUN}/serial.log" in _values(argv, "-chardev")
    assert _values(argv, "-serial") == ["chardev:serial0"]
    assert "-vnc" not in argv
    # Only what every guest has: the hot-plug ports and the SCSI controller.
    assert sorted(_devices(argv)) == ["hp0", "hp1", "hp2", "hp3", "scsi0"]


def test_argv_is_pure() -> None:
    rundir = Path("/nonexistent/overcast-test/g1")
    spec = _spec(disks=(_disk("ide", 0, 0),), nics=(NicSpec("virtio", "52:54:00:00:00:01"),))
    assert qemu_argv(spec, rundir, "tcg") == qemu_argv(spec, rundir, "tcg")
    assert not rundir.parent.exists()


def test_accelerators() -> None:
    tcg = qemu_argv(_spec(), RUN, "tcg")
    assert _values(tcg, "-accel") == ["tcg,thread=multi"]
    assert _values(tcg, "-cpu") == ["max"]
    kvm = qemu_argv(_spec(), RUN, "kvm")
    assert _values(kvm, "-accel") == ["kvm"]
    assert _values(kvm, "-cpu") == ["host"]
    with pytest.raises(UsageError):
        accel_argv("hvf")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bus_no", "unit", "port"),
    [(0, 0, "ide.0"), (0, 1, "ide.1"), (1, 0, "ide.2"), (1, 1, "ide.3"), (2, 1, "ide.5")],
)
def test_ide_maps_bus_and_unit_to_an_ahci_port(bus_no: int, unit: int, port: str) -> None:
    disk = _disk("ide", bus_no, unit)
    devices = _devices(qemu_argv(_spec(disks=(disk,)), RUN, "tcg"))
    device = devices[f"drive-ide-{bus_no}-{unit}"]
    assert device["driver"] == "ide-hd"
    assert device["bus"] == port


@pytest.mark.parametrize(("bus_no", "unit"), [(3, 0), (0, 2), (5, 1)])
def test_ide_beyond_the_six_ports_is_refused(bus_no: int, unit: int) -> None:
    with pytest.raises(UsageError, match="IDE"):
        qemu_argv(_spec(disks=(_disk("ide", bus_no, unit),)), RUN, "tcg")


def test_scsi_disks_share_one_virtio_scsi_controller() -> None:
    disks = (_disk("scsi", 0, 0), _disk("scsi", 0, 5, media="cdrom"))
    argv = qemu_argv(_spec(disks=disks), RUN, "tcg")
    devices = _devices(argv)
    assert [d for d in devices.values() if d["driver"] == "virtio-scsi-pci"] == [
        {"driver": "virtio-scsi-pci", "id": "scsi0"}
    ]
    hd, cd = devices["drive-scsi-0-0"], devices["drive-scsi-0-5"]
    assert (hd["driver"], hd["bus"], hd["scsi-id"], hd["lun"]) == ("scsi-hd", "scsi0.0", 0, 0)
    assert (cd["driver"], cd["scsi-id"]) == ("scsi-cd", 5)
    assert _blockdevs(argv)["node-scsi-0-5"]["read-only"] is True
    assert _blockdevs(argv)["node-scsi-0-0"]["read-only"] is False


def test_scsi_has_only_bus_zero() -> None:
    with pytest.raises(UsageError, match="SCSI"):
        qemu_argv(_spec(disks=(_disk("scsi", 1, 0),)), RUN, "tcg")
    with pytest.raises(UsageError, match="SCSI"):
        qemu_argv(_spec(disks=(_disk("scsi", 0, 256),)), RUN, "tcg")


def test_virtio_block_devices() -> None:
    disks = (_disk("virtio", 0, 0), _disk("virtio", 0, 7, media="cdrom"))
    argv = qemu_argv(_spec(disks=disks), RUN, "tcg")
    devices = _devices(argv)
    assert devices["drive-block-0"]["driver"] == "virtio-blk-pci"
    assert devices["drive-block-0"]["drive"] == "node-block-0"
    assert devices["drive-block-7"]["driver"] == "virtio-blk-pci"
    assert _blockdevs(argv)["node-block-7"]["read-only"] is True
    assert disk_id(disks[1]) == "drive-block-7"
    # The SCSI controller is there without SCSI disks (for hot-plugged ones).
    assert [d["id"] for d in devices.values() if d["driver"] == "virtio-scsi-pci"] == ["scsi0"]


def test_ide_cdrom_is_a_read_only_ide_cd() -> None:
    argv = qemu_argv(_spec(disks=(_disk("ide", 1, 0, media="cdrom"),)), RUN, "tcg")
    assert _devices(argv)["drive-ide-1-0"]["driver"] == "ide-cd"
    blockdev = _blockdevs(argv)["node-ide-1-0"]
    assert blockdev["read-only"] is True
    assert blockdev["file"] == {
        "driver": "file",
        "filename": "/data/drives/ide-1-0.img",
        "discard": "unmap",
    }


def test_images_keep_locking_and_shared_disks_allow_other_writers() -> None:
    disks = (_disk("ide", 0, 0), _disk("virtio", 0, 1, shared=True))
    argv = qemu_argv(_spec(disks=disks), RUN, "tcg")
    devices = _devices(argv)
    assert "share-rw" not in devices["drive-ide-0-0"]
    assert devices["drive-block-1"]["share-rw"] is True
    # Locking is never switched off: it is the guard against running twice.
    assert "locking" not in " ".join(_values(argv, "-blockdev"))


def test_boot_order_becomes_bootindex() -> None:
    disks = (
        _disk("ide", 0, 0, bootindex=2),
        _disk("virtio", 0, 0, bootindex=1),
        _disk("scsi", 0, 0),
    )
    devices = _devices(qemu_argv(_spec(disks=disks), RUN, "tcg"))
    assert devices["drive-ide-0-0"]["bootindex"] == 2
    assert devices["drive-block-0"]["bootindex"] == 1
    assert "bootindex" not in devices["drive-scsi-0-0"]


def test_nics_with_taps_models_and_macs() -> None:
    nics = (
        NicSpec("e1000", "52:54:00:AA:BB:01", "oc-tap0"),
        NicSpec("rtl8139", "52-54-00-aa-bb-02", "oc-tap1"),
        NicSpec("virtio", "52:54:00:aa:bb:03"),
    )
    argv = qemu_argv(_spec(nics=nics), RUN, "tcg")
    devices = _devices(argv)
    assert devices["nic0"] == {
        "driver": "e1000",
        "id": "nic0",
        "netdev": "net0",
        "mac": "52:54:00:aa:bb:01",
    }
    assert devices["nic1"]["driver"] == "rtl8139"
    assert devices["nic1"]["mac"] == "52:54:00:aa:bb:02"
    assert devices["nic2"] == {"driver": "virtio-net-pci", "id": "nic2", "mac": "52:54:00:aa:bb:03"}
    assert _values(argv, "-netdev") == [
        "tap,id=net0,ifname=oc-tap0,script=no,downscript=no",
        "tap,id=net1,ifname=oc-tap1,script=no,downscript=no",
    ]
    assert taps_from_argv(argv) == {"nic0": "oc-tap0", "nic1": "oc-tap1"}


def test_vnc_with_password_keeps_the_password_off_the_command_line() -> None:
    vnc = VncSpec("192.0.2.10", 3, "s3cret")
    argv = qemu_argv(_spec(vnc=vnc), RUN, "tcg")
    assert _values(argv, "-vnc") == ["192.0.2.10:3,password=on"]
    assert _devices(argv)["video0"]["driver"] == "VGA"
    assert "s3cret" not in " ".join(argv)
    assert vnc.port == 5903


def test_vnc_without_password_and_on_ipv6() -> None:
    argv = qemu_argv(_spec(vnc=VncSpec("::1", 0)), RUN, "tcg")
    assert _values(argv, "-vnc") == ["[::1]:0"]


def test_commas_in_names_and_paths_cannot_inject_options() -> None:
    rundir = Path("/run/a,b")
    disk = DiskSpec(Path("/data/x,file=/etc/passwd"), "ide", 0, 0)
    argv = qemu_argv(_spec(name="evil,debug-threads=off", disks=(disk,)), rundir, "tcg")
    assert _values(argv, "-name") == ["guest=evil,,debug-threads=off,debug-threads=on"]
    assert f"path={rundir}".replace(",", ",,") + "/qmp.sock" in qmp_chardev(RunFiles(rundir))
    assert _blockdevs(argv)["node-ide-0-0"]["file"] == {
        "driver": "file",
        "filename": "/data/x,file=/etc/passwd",
        "discard": "unmap",
    }


def test_pci_slots_run_out() -> None:
    # Two slots are every guest's: the hot-plug ports' and the SCSI controller's.
    fits = tuple(_disk("virtio", 0, n) for n in range(PCI_SLOTS - 2))
    devices = _devices(qemu_argv(_spec(disks=fits), RUN, "tcg"))
    assert len([d for d in devices.values() if d["driver"] == "virtio-blk-pci"]) == PCI_SLOTS - 2
    # One NIC more: one too many.
    nics = (NicSpec("e1000", "52:54:00:00:00:01"),)
    with pytest.raises(UsageError, match="PCI"):
        qemu_argv(_spec(disks=fits, nics=nics), RUN, "tcg")


def test_unusable_run_directories() -> None:
    with pytest.raises(FailedError, match="absolute"):
        qemu_argv(_spec(), Path("relative/dir"), "tcg")
    with pytest.raises(FailedError, match="too long"):
        qemu_argv(_spec(), Path("/" + "d" * 100), "tcg")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: _spec(uuid="not-a-uuid"), "UUID"),
        (lambda: _spec(smp=0), "smp"),
        (lambda: _spec(mem_mib=8), "memory"),
        (lambda: _spec(cpu_mhz=-1), "cpu"),
        (lambda: _disk("floppy", 0, 0), "bus"),
        (lambda: _disk("ide", 0, 0, media="tape"), "media"),
        (lambda: _disk("ide", -1, 0), "negative"),
        (lambda: _disk("virtio", 1, 0), "virtio"),
        (lambda: _disk("ide", 0, 0, bootindex=-1), "boot"),
        (lambda: DiskSpec(Path("rel.img"), "ide", 0, 0), "absolute"),
        (lambda: _spec(disks=(_disk("ide", 0, 0), _disk("ide", 0, 0))), "twice"),
        (
            lambda: _spec(
                disks=(DiskSpec(Path("/d/a"), "ide", 0, 0), DiskSpec(Path("/d/a"), "ide", 0, 1))
            ),
            "image",
        ),
        (
            lambda: _spec(disks=(_disk("ide", 0, 0, bootindex=1), _disk("ide", 0, 1, bootindex=1))),
            "boot index",
        ),
        (lambda: NicSpec("ne2k", "52:54:00:00:00:01"), "model"),
        (lambda: NicSpec("e1000", "52:54:00:00:01"), "MAC"),
        (lambda: NicSpec("e1000", "01:00:5e:00:00:01"), "unicast"),
        (lambda: NicSpec("e1000", "00:00:00:00:00:00"), "zero"),
        (lambda: NicSpec("e1000", "52:54:00:00:00:01", "tap/../x"), "interface"),
        (lambda: NicSpec("e1000", "52:54:00:00:00:01", "a-very-long-tap-name"), "interface"),
        (
            lambda: _spec(
                nics=(NicSpec("e1000", "52:54:00:00:00:01"), NicSpec("virtio", "52:54:00:00:00:01"))
            ),
            "MAC address",
        ),
        (
            lambda: _spec(
                nics=(
                    NicSpec("e1000", "52:54:00:00:00:01", "t0"),
                    NicSpec("e1000", "52:54:00:00:00:02", "t0"),
                )
            ),
            "tap",
        ),
        (lambda: VncSpec("localhost", 0), "IP address"),
        (lambda: VncSpec("127.0.0.1", 60000), "display"),
        (lambda: VncSpec("127.0.0.1", 0, "ninechars"), "password"),
    ],
)
def test_impossible_specs_are_usage_errors(build: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build()  # type: ignore[operator]
