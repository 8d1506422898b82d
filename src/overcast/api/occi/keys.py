"""OCCI attributes as ElasticHosts keys and service arguments: pure
functions, no HTTP, no store.

The attributes arrive checked against their definitions
(``categories.check_attributes``: names and types); what is checked here is
what overcast can do with them: sizes within the server limits, the one
architecture, device slots, addresses only on the public network. The
mapping itself is described in ``occi.mapping``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from overcast.api.occi.categories import (
    COMPUTE,
    IPNETWORKINTERFACE,
    OS_TPL,
    RESOURCE_TPL,
    AttributeValue,
    Mixin,
    defaults,
)
from overcast.api.occi.mapping import (
    GIB,
    META_HOSTNAME,
    META_OS_TPL,
    META_SUMMARY,
    PERSISTENT,
    PUBLIC,
    compute_sizes,
    os_template_of,
)
from overcast.model.codec import Keys, check_value
from overcast.model.drive import DriveChanges, DriveSpec
from overcast.model.errors import UsageError
from overcast.model.keys import MAX_SIZE
from overcast.model.resource import ResourceChanges
from overcast.model.server import CPU_RANGE, MAX_NICS, MEM_RANGE, SMP_RANGE, Server

__all__ = [
    "NicRequest",
    "compute_changes",
    "compute_keys",
    "device_of",
    "free_device",
    "free_nic",
    "interface_of",
    "network_changes",
    "nic_index",
    "nic_request",
    "storage_changes",
    "storage_size",
    "storage_spec",
]

_SECTOR = 512
_DEVICE = re.compile(r"ide:[01]:[01]|scsi:0:[0-7]|block:[0-7]")
_NIC = re.compile(r"nic:([0-9])")
#: Slots tried for a storagelink without a deviceid: IDE first while the
#: guest is not running (what every BIOS boots from), hot-pluggable ones on a
#: running guest (IDE cannot be hot-plugged).
_COLD_SLOTS = (
    "ide:0:0",
    "ide:0:1",
    "ide:1:0",
    "ide:1:1",
    *(f"scsi:0:{u}" for u in range(8)),
    *(f"block:{n}" for n in range(8)),
)
_HOT_SLOTS = _COLD_SLOTS[4:]


def _text(attributes: Mapping[str, AttributeValue], name: str) -> str | None:
    value = attributes.get(name)
    if value is None:
        return None
    assert isinstance(value, str), name  # check_attributes ran first
    check_value(name, value)
    return value


def _title(attributes: Mapping[str, AttributeValue]) -> str | None:
    title = _text(attributes, "occi.core.title")
    if title is not None and (not title.strip() or len(title.strip()) > 255):
        raise UsageError("occi.core.title: 1 to 255 characters, not all blank")
    return title.strip() if title is not None else None


def _number(attributes: Mapping[str, AttributeValue], name: str) -> float | None:
    value = attributes.get(name)
    if value is None:
        return None
    assert isinstance(value, int | float) and not isinstance(value, bool), name
    return float(value)


def _in_range(name: str, value: int, bounds: tuple[int, int], unit: str, given: str) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise UsageError(f"{name}: {given} makes {value} {unit}; overcast allows {low}..{high}")


def _refuse_unsupported(attributes: Mapping[str, AttributeValue]) -> None:
    architecture = attributes.get("occi.compute.architecture")
    if architecture is not None and architecture != "x64":
        raise UsageError("occi.compute.architecture: overcast runs x64 guests only")
    if "occi.compute.share" in attributes:
        raise UsageError("occi.compute.share: overcast does not weigh CPU shares")


def _os_template(mixins: Iterable[Mixin]) -> str | None:
    chosen = [m.term for m in mixins if OS_TPL in m.depends]
    if len(chosen) > 1:
        raise UsageError("a compute has one os_tpl, this gives " + ", ".join(chosen))
    return chosen[0] if chosen else None


def _resource_templates(mixins: Iterable[Mixin]) -> list[Mixin]:
    chosen = [m for m in mixins if RESOURCE_TPL in m.depends]
    if len(chosen) > 1:
        raise UsageError(
            "a compute has one resource_tpl, this gives " + ", ".join(m.term for m in chosen)
        )
    return chosen


def _sized(values: Mapping[str, AttributeValue]) -> dict[str, str]:
    cores = _number(values, "occi.compute.cores")
    memory = _number(values, "occi.compute.memory")
    speed = _number(values, "occi.compute.speed")
    assert cores is not None and memory is not None and speed is not None
    smp, mem, cpu = compute_sizes(int(cores), memory, speed)
    _in_range("occi.compute.cores", smp, SMP_RANGE, "cores", f"{smp}")
    _in_range("occi.compute.memory", mem, MEM_RANGE, "MiB", f"{memory:g} GiB")
    _in_range("occi.compute.speed", cpu, CPU_RANGE, "MHz", f"{speed:g} GHz on {smp} cores")
    return {"smp": str(smp), "mem": str(mem), "cpu": str(cpu)}


def _meta(attributes: Mapping[str, AttributeValue]) -> dict[str, str]:
    out = {}
    for name, key in (
        ("occi.compute.hostname", META_HOSTNAME),
        ("occi.core.summary", META_SUMMARY),
    ):
        value = _text(attributes, name)
        if value is not None:
            out[key] = value
    return out


def compute_keys(
    attributes: Mapping[str, AttributeValue], mixins: Sequence[Mixin]
) -> tuple[Keys, str | None, bool]:
    """A new compute's ElasticHosts keys (no devices or NICs yet), the
    library drive of its ``os_tpl`` if any, and whether to create it
    stopped (``occi.compute.state`` ``inactive``). Attributes were checked
    against the definitions first (``check_attributes``)."""
    _refuse_unsupported(attributes)
    if "occi.core.id" in attributes:
        raise UsageError("occi.core.id: overcast assigns the ids")
    state = attributes.get("occi.compute.state", "active")
    if state not in ("active", "inactive"):
        raise UsageError(f"occi.compute.state: a new compute is active or inactive, not {state}")
    _resource_templates(mixins)
    values = {**defaults(COMPUTE, mixins), **attributes}
    name = _title(attributes) or _text(attributes, "occi.compute.hostname") or "compute"
    keys: Keys = {"name": name.strip() or "compute", **_sized(values), **_meta(attributes)}
    if PERSISTENT in mixins:
        keys["persistent"] = "true"
    os_tpl = _os_template(mixins)
    if os_tpl is not None:
        keys[META_OS_TPL] = os_tpl
    return keys, os_tpl, state == "inactive"


def compute_changes(
    server: Server,
    attributes: Mapping[str, AttributeValue],
    mixins: Sequence[Mixin],
    *,
    replace: bool,
) -> Keys:
    """The keys that make ``server`` what an update asks for.

    ``replace`` (PUT): the mixins given are all the compute has, so leaving
    ``persistent`` out makes it non-persistent; attributes left out keep
    their values (ElasticHosts keys cannot be unset). A ``resource_tpl``
    resizes: its sizes apply where the attributes do not say otherwise.
    ``os_tpl`` is the compute's origin and cannot change.
    """
    _refuse_unsupported(attributes)
    current = os_template_of(server)
    asked = _os_template(mixins)
    if asked is not None and asked != current:
        raise UsageError("os_tpl applies when a compute is created; create a new one instead")
    spec = server.spec
    values: dict[str, AttributeValue] = {
        "occi.compute.cores": spec.smp,
        "occi.compute.memory": spec.mem / 1024,
        "occi.compute.speed": spec.cpu / spec.smp / 1000,
    }
    for template in _resource_templates(mixins):
        values.update({a.name: a.default for a in template.attributes if a.default is not None})
    values.update({k: v for k, v in attributes.items() if k in values})
    keys: Keys = {**_sized(values), **_meta(attributes)}
    if (title := _title(attributes)) is not None:
        keys["name"] = title
    if replace or PERSISTENT in mixins:
        keys["persistent"] = "true" if PERSISTENT in mixins else "false"
    return keys


def storage_size(value: float, name: str = "occi.storage.size") -> int:
    """GiB to bytes, in whole sectors."""
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{name}: must be a positive number of GiB")
    size = round(value * GIB / _SECTOR) * _SECTOR
    if size < _SECTOR:
        raise UsageError(f"{name}: {value:g} GiB is less than one 512-byte sector")
    if size > MAX_SIZE:
        raise UsageError(f"{name}: {value:g} GiB is more than the largest drive, 64 TiB")
    return size


def storage_spec(attributes: Mapping[str, AttributeValue]) -> DriveSpec:
    if "occi.core.id" in attributes:
        raise UsageError("occi.core.id: overcast assigns the ids")
    size = _number(attributes, "occi.storage.size")
    assert size is not None  # required
    meta = {}
    if (summary := _text(attributes, "occi.core.summary")) is not None:
        meta[META_SUMMARY] = summary
    return DriveSpec(name=_title(attributes) or "storage", size=storage_size(size), meta=meta)


def storage_changes(attributes: Mapping[str, AttributeValue]) -> DriveChanges:
    size = _number(attributes, "occi.storage.size")
    meta = {}
    if (summary := _text(attributes, "occi.core.summary")) is not None:
        meta[META_SUMMARY] = summary
    return DriveChanges(
        name=_title(attributes),
        size=storage_size(size) if size is not None else None,
        meta=meta,
    )


def network_changes(attributes: Mapping[str, AttributeValue], *, creating: bool) -> ResourceChanges:
    """A VLAN's name and summary (create and update alike)."""
    if creating and "occi.core.id" in attributes:
        raise UsageError("occi.core.id: overcast assigns the ids")
    for name in ("occi.network.vlan", "occi.network.label"):
        if name in attributes:
            raise UsageError(f"{name}: overcast's networks are bridges, not 802.1q tags")
    meta = {}
    if (summary := _text(attributes, "occi.core.summary")) is not None:
        meta[META_SUMMARY] = summary
    return ResourceChanges(name=_title(attributes), meta=meta)


# -- links in ------------------------------------------------------------------


def free_device(taken: Iterable[str], *, running: bool) -> str:
    """The first free slot for a storagelink that names none."""
    used = set(taken)
    for slot in _HOT_SLOTS if running else _COLD_SLOTS:
        if slot not in used:
            return slot
    raise UsageError("no free device slot left on this compute")


def free_nic(taken: Iterable[int]) -> int:
    used = set(taken)
    for index in range(MAX_NICS):
        if index not in used:
            return index
    raise UsageError(f"a compute has at most {MAX_NICS} networkinterfaces")


def device_of(attributes: Mapping[str, AttributeValue]) -> str | None:
    """The ``deviceid`` a storagelink asks for, checked."""
    device = _text(attributes, "occi.storagelink.deviceid")
    if device is not None and not _DEVICE.fullmatch(device):
        raise UsageError(
            f"occi.storagelink.deviceid: {device[:40]!r} is not ide:B:U (0-1), scsi:0:U (0-7) "
            "or block:N (0-7)"
        )
    if "occi.storagelink.mountpoint" in attributes:
        raise UsageError("occi.storagelink.mountpoint: overcast does not mount inside guests")
    return device


def nic_index(device: str) -> int | None:
    match = _NIC.fullmatch(device)
    return int(match.group(1)) if match else None


def interface_of(attributes: Mapping[str, AttributeValue]) -> int | None:
    """The NIC index a networkinterface asks for (``nic:N``), if it does."""
    interface = _text(attributes, "occi.networkinterface.interface")
    if interface is None:
        return None
    index = nic_index(interface)
    if index is None:
        raise UsageError(f"occi.networkinterface.interface: {interface[:40]!r} is not nic:N")
    return index


@dataclass(frozen=True)
class NicRequest:
    """A NIC a networkinterface asks for: ``vlan`` None is the public
    network; ``dhcp`` an address of the user's or ``auto``."""

    vlan: str | None
    dhcp: str | None
    mac: str | None


def nic_request(
    network: str, mixins: Sequence[str], attributes: Mapping[str, AttributeValue]
) -> NicRequest:
    """``network``: the target's id (``public`` or a VLAN's UUID)."""
    mac = _text(attributes, "occi.networkinterface.mac")
    address = _text(attributes, "occi.networkinterface.address")
    allocation = attributes.get("occi.networkinterface.allocation")
    if "occi.networkinterface.gateway" in attributes and network != PUBLIC:
        raise UsageError("occi.networkinterface.gateway: a private network has no gateway")
    if network != PUBLIC:
        if address is not None or IPNETWORKINTERFACE.id in mixins:
            raise UsageError(
                "ipnetworkinterface: addresses are for the public network; a private network "
                "carries whatever the guests configure"
            )
        return NicRequest(vlan=network, dhcp=None, mac=mac)
    if allocation == "static":
        raise UsageError(
            "occi.networkinterface.allocation: overcast hands addresses out by DHCP (dynamic)"
        )
    if address is not None:
        dhcp: str | None = address.split("/")[0]
    elif IPNETWORKINTERFACE.id in mixins or allocation == "dynamic":
        dhcp = "auto"
    else:
        dhcp = None
    return NicRequest(vlan=None, dhcp=dhcp, mac=mac)
