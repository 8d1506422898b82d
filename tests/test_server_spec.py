"""Server configuration parsing: every rule of API.md's server keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overcast.model.drive import Media
from overcast.model.errors import UsageError
from overcast.model.server import Bus, NicModel, new_mac, parse_server_spec

D1 = "0b8f2f32-0c27-4a2b-9f43-7c1d2f1d8a01"
D2 = "1c9a3a43-1d38-4b3c-8a54-8d2e3a2e9b12"
BASE = {"name": "web", "cpu": "2000", "mem": "512"}


def test_minimal_server_defaults() -> None:
    spec = parse_server_spec(BASE)
    assert (spec.name, spec.cpu, spec.mem, spec.smp) == ("web", 2000, 512, 1)
    assert spec.devices == () and spec.nics == () and spec.vnc is None
    assert spec.persistent is False


def test_smp_auto_follows_cpu() -> None:
    assert parse_server_spec({**BASE, "cpu": "5000"}).smp == 3
    assert parse_server_spec({**BASE, "cpu": "5000", "smp": "2"}).smp == 2


def test_devices_media_boot_and_nics() -> None:
    spec = parse_server_spec(
        {
            **BASE,
            "ide:0:1": D1,
            "block:3": D2,
            "ide:0:1:media": "cdrom",
            "boot": "ide:0:1 block:3",
            "nic:0:model": "virtio",
            "nic:0:dhcp": "auto",
            "nic:1:model": "e1000",
            "nic:1:mac": "52:54:00:AA:bb:01",
            "nic:1:vlan": D1,
            "vnc": "auto",
            "vnc:password": "secret",
            "persistent": "true",
        }
    )
    ide, blk = spec.devices
    assert (ide.bus, ide.index, ide.unit, ide.media) == (Bus.IDE, 0, 1, Media.CDROM)
    assert (blk.bus, blk.index, blk.media) == (Bus.VIRTIO, 3, Media.DISK)
    assert spec.boot == ("ide:0:1", "block:3")
    assert spec.nics[0].model is NicModel.VIRTIO and spec.nics[0].dhcp == "auto"
    assert spec.nics[1].mac == "52:54:00:aa:bb:01" and spec.nics[1].vlan == D1
    assert spec.vnc == "auto" and spec.vnc_password == "secret" and spec.persistent


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"ide:2:0": D1}, "ide:2:0"),
        ({"scsi:1:0": D1}, "scsi:1:0"),
        ({"block:8": D1}, "block:8"),
        ({"sata:0": D1}, "sata:0"),
        ({"ide:0:0": "not-a-uuid"}, "ide:0:0"),
        ({"ide:0:0": D1, "block:0": D1}, D1),
        ({"ide:0:0:media": "floppy", "ide:0:0": D1}, "ide:0:0:media"),
        ({"block:1:media": "cdrom"}, "block:1"),
        ({"boot": "block:0"}, "block:0"),
        ({"nic:0:model": "ne2000"}, "nic:0:model"),
        ({"nic:0:mac": "52:54:00:00:00:01"}, "nic:0:model"),
        ({"nic:0:model": "e1000", "nic:0:mac": "zz"}, "nic:0:mac"),
        ({"nic:0:model": "e1000", "nic:0:mac": "01:00:00:00:00:01"}, "multicast"),
        (
            {
                "nic:0:model": "e1000",
                "nic:1:model": "e1000",
                "nic:0:mac": "52:54:00:00:00:01",
                "nic:1:mac": "52:54:00:00:00:01",
            },
            "same MAC",
        ),
        ({"nic:0:model": "e1000", "nic:0:dhcp": "nope"}, "nic:0:dhcp"),
        ({"cpu": "50"}, "cpu"),
        ({"mem": "999999999"}, "mem"),
        ({"smp": "0"}, "smp"),
        ({"vnc:password": "123456789"}, "vnc:password"),
        ({"callback:exit": "ftp://x"}, "callback:exit"),
        ({"frobnicate": "1"}, "frobnicate"),
    ],
)
def test_bad_configurations_name_the_key(extra: dict[str, str], needle: str) -> None:
    with pytest.raises(UsageError, match=needle.replace(".", r"\.")):
        parse_server_spec({**BASE, **extra})


@pytest.mark.parametrize("missing", ["name", "cpu", "mem"])
def test_required_keys(missing: str) -> None:
    keys = dict(BASE)
    del keys[missing]
    with pytest.raises(UsageError, match=f"missing key {missing}"):
        parse_server_spec(keys)


def test_read_only_info_keys_are_accepted_back() -> None:
    spec = parse_server_spec({**BASE, "server": D1, "status": "active", "ide:0:0:read:bytes": "7"})
    assert spec.name == "web"


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=6))
def test_arbitrary_keys_parse_or_raise_usage(extra: dict[str, str]) -> None:
    try:
        parse_server_spec({**BASE, **extra})
    except UsageError as err:
        assert err.message


def test_generated_macs_are_unicast_and_local() -> None:
    macs = {new_mac() for _ in range(50)}
    assert len(macs) > 45
    assert all(m.startswith("52:54:00:") for m in macs)
