"""overcast's objects as OCCI entities: pure functions, no HTTP, no store.
(The other way, OCCI attributes as ElasticHosts keys, is ``occi.keys``.)

The mapping, and the choices GFD.224 leaves to a provider:

- **compute = server.** ``occi.compute.cores`` is ``smp``; ``memory`` (GiB)
  is ``mem / 1024``; ``speed`` (GHz) is *per core*, ``cpu / smp / 1000``
  (ElasticHosts' ``cpu`` is the whole server's MHz), so a client that sets
  cores and speed gets ``cpu = speed * 1000 * cores``. ``occi.core.title``
  is the server's ``name``; ``hostname`` and ``summary`` have no
  ElasticHosts key and live in ``user:occi.hostname`` / ``user:occi.summary``
  metadata, which the ElasticHosts API shows as well. ``architecture`` is
  always ``x64``; ``share`` is refused (overcast does not weigh CPU shares).
  State: ``active`` while the guest runs, ``suspended`` while paused,
  ``inactive`` while stopped (a persistent server after ``stop``, or one
  created inactive).
- **storage = drive.** ``occi.storage.size`` is GiB (``bytes / 2**30``),
  fractions allowed, rounded to whole 512-byte sectors on the way in so
  that what a client reads back converts to the same bytes again. Always
  ``online``; ``state.message`` says ``imaging N%`` while a copy runs.
- **network = VLAN**, plus one shared network ``public`` (the addresses of
  ``/resources/ip``) carrying the ``ipnetwork`` mixin. overcast's VLANs are
  bridges, not 802.1q tags: ``occi.network.vlan`` and ``label`` are refused.
- **storagelink = a drive on a server's device slot**, id
  ``<server>_<device>`` (``…_ide:0:0``), ``deviceid`` the slot.
- **networkinterface = a NIC**, id ``<server>_nic:<N>``, ``interface`` the
  ElasticHosts name ``nic:N``; with an address it has the
  ``ipnetworkinterface`` mixin (``allocation`` is ``dynamic``: overcast's
  DHCP hands the address out).
- **Templates.** An ``os_tpl`` per library drive (term: its UUID); the
  compute keeps the one it was made from in ``user:occi.os_tpl``. A
  ``resource_tpl`` is a size: a compute *shows* the template whose cores,
  memory and speed it has, so the mixin never lies after a resize.
- **persistent**, a provider mixin: such a compute survives ``stop`` as
  ``inactive`` (ElasticHosts ``persistent true``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from overcast.api.occi.categories import (
    COMPUTE,
    COMPUTE_RESTART,
    COMPUTE_START,
    COMPUTE_STOP,
    COMPUTE_SUSPEND,
    IPNETWORK,
    IPNETWORKINTERFACE,
    NETWORK,
    NETWORKINTERFACE,
    OS_TPL_SCHEME,
    STORAGE,
    STORAGE_RESIZE,
    STORAGELINK,
    AttributeValue,
    Mixin,
    resource_template,
)
from overcast.api.occi.render import EntityRendering
from overcast.model.drive import Drive
from overcast.model.errors import UsageError
from overcast.model.resource import Ip, Vlan
from overcast.model.server import Server, ServerStatus

__all__ = [
    "GIB",
    "META_HOSTNAME",
    "META_OS_TPL",
    "META_SUMMARY",
    "PERSISTENT",
    "PUBLIC",
    "RESOURCE_TEMPLATES",
    "Site",
    "compute_entity",
    "compute_sizes",
    "device_link",
    "link_id",
    "network_entity",
    "nic_link",
    "os_template_of",
    "public_entity",
    "split_link_id",
    "storage_entity",
]

GIB = 1 << 30
#: The id of the shared public network (``/network/public``).
PUBLIC = "public"
META_HOSTNAME = "user:occi.hostname"
META_SUMMARY = "user:occi.summary"
META_OS_TPL = "user:occi.os_tpl"

PERSISTENT = Mixin(
    scheme="http://overcast.invalid/occi/compute#",
    term="persistent",
    title="Persistent compute: stop leaves it inactive instead of deleting it",
    applies=(COMPUTE,),
    location="/persistent/",
)

#: The sizes offered: term, title, cores, memory GiB, speed GHz per core.
#: ``tiny`` is for guests that need next to nothing.
_SIZES: tuple[tuple[str, str, int, float, float], ...] = (
    ("tiny", "Tiny: 1 core, 128 MiB, 0.5 GHz", 1, 0.125, 0.5),
    ("small", "Small: 1 core, 512 MiB, 2 GHz", 1, 0.5, 2.0),
    ("medium", "Medium: 2 cores, 2 GiB, 2 GHz", 2, 2.0, 2.0),
    ("large", "Large: 4 cores, 8 GiB, 2 GHz", 4, 8.0, 2.0),
)
RESOURCE_TEMPLATES: tuple[Mixin, ...] = tuple(
    resource_template(term, title, cores=cores, memory=memory, speed=speed)
    for term, title, cores, memory, speed in _SIZES
)


def compute_sizes(cores: int, memory: float, speed: float) -> tuple[int, int, int]:
    """``(smp, mem MiB, cpu MHz)`` for OCCI's cores, GiB and GHz per core."""
    return cores, round(memory * 1024), round(speed * 1000 * cores)


_TEMPLATE_SIZES = {
    compute_sizes(cores, memory, speed): template
    for (_t, _title, cores, memory, speed), template in zip(_SIZES, RESOURCE_TEMPLATES, strict=True)
}

_ENTITY_PATH = re.compile(r"/(compute|storage|network|storagelink|networkinterface)/([^/?#]+)")


# -- locations --------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where this service answers, as the request named it: entity
    locations are absolute URLs on it (GFD.223 leaves the choice; clients
    follow them without knowing our host)."""

    base: str  # scheme://authority, no trailing slash

    def url(self, path: str) -> str:
        return self.base + path

    def path(self, location: str) -> str:
        """A location a client sent (a path, or an absolute URL on this
        service) as a path."""
        if location.startswith("/"):
            return location
        parts = urlsplit(location)
        here = urlsplit(self.base)
        if (parts.scheme.lower(), parts.netloc.lower()) != (here.scheme, here.netloc.lower()):
            raise UsageError(f"{location[:120]} is not a location on {self.base}")
        return parts.path or "/"

    def entity(self, location: str, what: str) -> tuple[str, str]:
        """``(collection term, id)`` of an entity location."""
        match = _ENTITY_PATH.fullmatch(self.path(location))
        if match is None:
            raise UsageError(f"{what}: {location[:120]} is not the location of an entity")
        return match.group(1), unquote(match.group(2))

    def of(self, collection: str, ident: str) -> str:
        return self.url(f"/{collection}/{ident}")


def link_id(server: str, device: str) -> str:
    """``<server>_<device>``: a link is its server's slot."""
    return f"{server}_{device}"


def split_link_id(ident: str) -> tuple[str, str]:
    server, sep, device = ident.partition("_")
    return server, (device if sep else "")


# -- out: compute ----------------------------------------------------------------

_STATE = {
    ServerStatus.ACTIVE: ("active", "running"),
    ServerStatus.PAUSED: ("suspended", "paused"),
    ServerStatus.STOPPED: ("inactive", "stopped"),
    ServerStatus.STARTING: ("inactive", "starting"),
}
_ACTIONS = {
    ServerStatus.ACTIVE: (COMPUTE_STOP.id, COMPUTE_RESTART.id, COMPUTE_SUSPEND.id),
    ServerStatus.PAUSED: (COMPUTE_START.id,),
    ServerStatus.STOPPED: (COMPUTE_START.id,),
    ServerStatus.STARTING: (),
}


def _template_of(server: Server) -> Mixin | None:
    spec = server.spec
    return _TEMPLATE_SIZES.get((spec.smp, spec.mem, spec.cpu))


def os_template_of(server: Server) -> str | None:
    """The library drive the compute was made from, if it was."""
    return server.config.get(META_OS_TPL) or None


def compute_entity(server: Server, site: Site, ips: Mapping[str, Ip]) -> EntityRendering:
    """``ips``: the owner's addresses (for each NIC's gateway)."""
    spec = server.spec
    state, message = _STATE[server.status]
    attributes: dict[str, AttributeValue] = {
        "occi.core.id": server.uuid,
        "occi.core.title": spec.name,
    }
    if (summary := server.config.get(META_SUMMARY)) is not None:
        attributes["occi.core.summary"] = summary
    attributes["occi.compute.architecture"] = "x64"
    attributes["occi.compute.cores"] = spec.smp
    if (hostname := server.config.get(META_HOSTNAME)) is not None:
        attributes["occi.compute.hostname"] = hostname
    attributes["occi.compute.speed"] = spec.cpu / spec.smp / 1000
    attributes["occi.compute.memory"] = spec.mem / 1024
    attributes["occi.compute.state"] = state
    attributes["occi.compute.state.message"] = message
    mixins = []
    if (os_tpl := os_template_of(server)) is not None:
        mixins.append(OS_TPL_SCHEME + os_tpl)
    if (template := _template_of(server)) is not None:
        mixins.append(template.id)
    if spec.persistent:
        mixins.append(PERSISTENT.id)
    links = [device_link(server, d.name, site) for d in spec.devices]
    links += [nic_link(server, n.index, site, ips) for n in server.nics]
    return EntityRendering(
        kind=COMPUTE.id,
        mixins=tuple(mixins),
        attributes=attributes,
        actions=_ACTIONS[server.status],
        links=tuple(links),
        location=site.of("compute", server.uuid),
    )


def _link_state(server: Server) -> str:
    return "active" if server.status in (ServerStatus.ACTIVE, ServerStatus.PAUSED) else "inactive"


def _link_ends(server: Server, site: Site, target: str, kind: str) -> dict[str, AttributeValue]:
    return {
        "occi.core.source": site.of("compute", server.uuid),
        "occi.core.source.kind": COMPUTE.id,
        "occi.core.target": target,
        "occi.core.target.kind": kind,
    }


def device_link(server: Server, device: str, site: Site) -> EntityRendering:
    """The storagelink of one of the server's devices (which must exist)."""
    (spec,) = [d for d in server.spec.devices if d.name == device]
    ident = link_id(server.uuid, device)
    attributes: dict[str, AttributeValue] = {"occi.core.id": ident}
    attributes.update(_link_ends(server, site, site.of("storage", spec.drive), STORAGE.id))
    attributes["occi.storagelink.deviceid"] = device
    attributes["occi.storagelink.state"] = _link_state(server)
    return EntityRendering(
        kind=STORAGELINK.id,
        attributes=attributes,
        location=site.of("storagelink", ident),
    )


def nic_link(server: Server, index: int, site: Site, ips: Mapping[str, Ip]) -> EntityRendering:
    """The networkinterface of the server's NIC ``index`` (which must exist)."""
    (nic,) = [n for n in server.nics if n.index == index]
    ident = link_id(server.uuid, f"nic:{index}")
    network = site.of("network", nic.vlan or PUBLIC)
    attributes: dict[str, AttributeValue] = {"occi.core.id": ident}
    attributes.update(_link_ends(server, site, network, NETWORK.id))
    attributes["occi.networkinterface.interface"] = f"nic:{index}"
    attributes["occi.networkinterface.mac"] = nic.mac
    attributes["occi.networkinterface.state"] = _link_state(server)
    mixins: tuple[str, ...] = ()
    if nic.ip is not None:
        mixins = (IPNETWORKINTERFACE.id,)
        attributes["occi.networkinterface.address"] = nic.ip
        ip = ips.get(nic.ip)
        if ip is not None and ip.gateway:
            attributes["occi.networkinterface.gateway"] = ip.gateway
        attributes["occi.networkinterface.allocation"] = "dynamic"
    return EntityRendering(
        kind=NETWORKINTERFACE.id,
        mixins=mixins,
        attributes=attributes,
        location=site.of("networkinterface", ident),
    )


# -- out: storage and networks ---------------------------------------------------


def storage_entity(drive: Drive, site: Site) -> EntityRendering:
    attributes: dict[str, AttributeValue] = {
        "occi.core.id": drive.uuid,
        "occi.core.title": drive.name,
    }
    if (summary := drive.meta.get(META_SUMMARY)) is not None:
        attributes["occi.core.summary"] = summary
    attributes["occi.storage.size"] = drive.size / GIB
    attributes["occi.storage.state"] = "online"
    attributes["occi.storage.state.message"] = (
        f"imaging {drive.imaging}" if drive.imaging is not None else "online"
    )
    return EntityRendering(
        kind=STORAGE.id,
        attributes=attributes,
        # Only what the drive's owner can do: a library drive is read-only.
        actions=() if drive.standard else (STORAGE_RESIZE.id,),
        location=site.of("storage", drive.uuid),
    )


def network_entity(vlan: Vlan, site: Site) -> EntityRendering:
    attributes: dict[str, AttributeValue] = {
        "occi.core.id": vlan.uuid,
        "occi.core.title": vlan.name,
    }
    if (summary := vlan.meta.get(META_SUMMARY)) is not None:
        attributes["occi.core.summary"] = summary
    attributes["occi.network.state"] = "active"
    attributes["occi.network.state.message"] = "a private network of yours"
    return EntityRendering(
        kind=NETWORK.id, attributes=attributes, location=site.of("network", vlan.uuid)
    )


def public_entity(pools: Sequence[str], site: Site) -> EntityRendering:
    """The shared network; its address is the operator's first pool."""
    attributes: dict[str, AttributeValue] = {
        "occi.core.id": PUBLIC,
        "occi.core.title": "public",
        "occi.core.summary": "The shared public network: your addresses from /resources/ip",
        "occi.network.state": "active",
        "occi.network.state.message": "shared by every user",
    }
    if pools:
        attributes["occi.network.address"] = pools[0]
    attributes["occi.network.allocation"] = "dynamic"
    return EntityRendering(
        kind=NETWORK.id,
        mixins=(IPNETWORK.id,),
        attributes=attributes,
        location=site.of("network", PUBLIC),
    )
