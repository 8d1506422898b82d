"""The OCCI 1.2 front end over HTTP, on the session's real cloud and guests.

Requests are built and answers read with the pure rendering layer
(``overcast.api.occi.render``, tested on its own in ``test_occi_render``), in
every rendering a client may choose; what the ElasticHosts API and the
process table show is the other side of every check. Servers without
drives start in tens of milliseconds, so most tests use those; the one that
needs an OS (``os_tpl``, the ACPI ``stop``) boots the test guest.

Tests that need the ``ServerService`` verbs being added in parallel
(``suspend``, ``resume``, ``attach_drive``, ``detach_drive``,
``attach_nic``, ``detach_nic``) say so in their docstrings.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud import Cloud, new_user
from overcast.api.occi.render import (
    ActionInvocation,
    EntityRendering,
    Format,
    format_of,
    parse_categories,
    parse_collection,
    parse_entity,
    render_action,
    render_entity,
)
from test_occi_render import GFD226_RESOURCE, GFD229_TEXT_PLAIN, _fix_location_typo, transcript
from test_servers import guest as guest
from test_servers import (
    listed,
    qemu_pids,
    records,
    serial,
    the_qemu,
    wait_for,
)

CORE = "http://schemas.ogf.org/occi/core#"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
COMPUTE = INFRA + "compute"
STORAGE = INFRA + "storage"
NETWORK = INFRA + "network"
STORAGELINK = INFRA + "storagelink"
NETWORKINTERFACE = INFRA + "networkinterface"
ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
IPNETWORKINTERFACE = (
    "http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface"
)
IPNETWORK = "http://schemas.ogf.org/occi/infrastructure/network#ipnetwork"
OS_TPL = "http://overcast.invalid/occi/os_tpl#"
RESOURCE_TPL = "http://overcast.invalid/occi/resource_tpl#"
PERSISTENT = "http://overcast.invalid/occi/compute#persistent"
#: The media types a client may ask for, each answered as asked.
MEDIA = ["text/plain", "text/occi", "application/occi+json", "application/json"]
#: An address range of this module's (RFC 2544 benchmarking space).
POOL, GATEWAY = "198.18.0.0/28", "198.18.0.1"


# -- a client ------------------------------------------------------------------------


class Occi:
    """One user speaking OCCI in one rendering."""

    def __init__(self, http: httpx.Client, media: str = "text/plain") -> None:
        self.http = http
        self.media = media
        fmt = format_of(media)
        assert fmt is not None
        self.fmt = fmt
        self.made: list[str] = []

    def send(
        self,
        method: str,
        path: str,
        entity: EntityRendering | None = None,
        *,
        action: ActionInvocation | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        out: dict[str, Any] = {"Accept": self.media}
        content = b""
        rendered = (
            render_entity(entity, self.fmt)
            if entity is not None
            else render_action(action, self.fmt)
            if action is not None
            else None
        )
        if rendered is not None:
            out["Content-Type"] = self.media
            out.update({k: v.encode("latin-1") for k, v in rendered.headers})
            content = rendered.body
        out.update(headers or {})
        return self.http.request(method, path, headers=out, content=content)

    def read(self, r: httpx.Response, status: int = 200) -> EntityRendering:
        assert r.status_code == status, (r.status_code, r.text)
        assert r.headers["content-type"] == self.media
        return parse_entity(self.fmt, r.content, r.headers.raw)

    def listing(self, path: str) -> list[str]:
        """A collection: its locations (text), or its entities' ids (JSON,
        which carries no locations)."""
        r = self.send("GET", path)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == self.media
        found = parse_collection(self.fmt, r.content, r.headers.raw)
        if self.fmt is Format.JSON:
            return [e.id or "" for e in found.entities]
        return list(found.locations)

    def create(self, path: str, entity: EntityRendering) -> tuple[str, EntityRendering]:
        """POST to a collection: the new entity's Location and rendering."""
        r = self.send("POST", path, entity)
        made = self.read(r, 201)
        location = r.headers["location"]
        self.made.append(location)
        return location, made

    def act(self, location: str, term: str, status: int = 200, **params: Any) -> httpx.Response:
        invocation = ActionInvocation(action=ACTION + term, attributes=params)
        r = self.send("POST", f"{location}?action={term}", action=invocation)
        assert r.status_code == status, (term, r.status_code, r.text)
        return r

    def cleanup(self) -> None:
        for location in reversed(self.made):
            r = self.http.delete(location)
            assert r.status_code in (200, 404), (location, r.status_code, r.text)


def compute(
    *mixins: str, links: tuple[EntityRendering, ...] = (), **attributes: Any
) -> EntityRendering:
    return EntityRendering(
        kind=COMPUTE,
        mixins=mixins,
        attributes={f"occi.{k.replace('__', '.')}": v for k, v in attributes.items()},
        links=links,
    )


def tiny(*mixins: str, **attributes: Any) -> EntityRendering:
    """The smallest compute: no drives, starts at once."""
    return compute(RESOURCE_TPL + "tiny", *mixins, **attributes)


def info(http: httpx.Client, server: str) -> dict[str, str]:
    r = http.get(f"/servers/{server}/info")
    assert r.status_code == 200, r.text
    return records(r.text)[0]


def ident(location: str) -> str:
    return location.rsplit("/", 1)[1]


def assert_refused(r: httpx.Response, status: int, says: str) -> None:
    """A clear refusal: the status, a plain-text message naming the problem."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("text/plain")
    assert says in r.text, r.text


@pytest.fixture(scope="module")
def pool(cloud: Cloud) -> str:
    done = cloud.overcast("admin", "ip", "add-pool", POOL, "--gateway", GATEWAY)
    # The session's cloud is shared: an earlier run of this module may have added it.
    assert done.returncode == 0 or "overlaps" in done.stderr, done.stderr
    return POOL


# -- the query interface ----------------------------------------------------------


@pytest.mark.parametrize("media", MEDIA)
def test_query_interface_in_every_rendering(
    cloud: Cloud, guest: str, user: httpx.Client, media: str
) -> None:
    occi = Occi(user, media)
    answers = [occi.send("GET", path) for path in ("/-/", "/.well-known/org/ogf/occi/-/")]
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media
        # GFD.223: the server names the OCCI version it speaks, once.
        assert r.headers.get_list("server") == ["overcast OCCI/1.2"]
    assert answers[0].content == answers[1].content
    refs = {
        ref.id: ref
        for ref in parse_categories(occi.fmt, answers[0].content, answers[0].headers.raw)
    }
    kinds = ["entity", "resource", "link"]
    for term in kinds:
        assert refs[CORE + term].cls == "kind"
    for term in ("compute", "storage", "network", "storagelink", "networkinterface"):
        assert refs[INFRA + term].cls == "kind"
        assert refs[INFRA + term].location == f"/{term}/"  # category locations are paths
    assert refs[COMPUTE].actions == tuple(
        ACTION + t for t in ("start", "stop", "restart", "suspend")
    )
    assert {a.name for a in refs[COMPUTE].attributes} >= {
        "occi.compute.cores",
        "occi.compute.memory",
        "occi.compute.speed",
        "occi.compute.state",
    }
    for mixin in (
        IPNETWORK,
        IPNETWORKINTERFACE,
        INFRA + "os_tpl",
        INFRA + "resource_tpl",
        PERSISTENT,
    ):
        assert refs[mixin].cls == "mixin", mixin
    # the library's guest is an OS template; the sizes are resource templates
    template = refs[OS_TPL + guest]
    assert template.rel == (INFRA + "os_tpl",) and template.location == f"/os_tpl/{guest}/"
    for size in ("tiny", "small", "medium", "large"):
        assert refs[RESOURCE_TPL + size].rel == (INFRA + "resource_tpl",)
    assert ACTION + "suspend" in refs and refs[ACTION + "stop"].cls == "action"


def test_query_interface_filter_and_methods(user: httpx.Client) -> None:
    occi = Occi(user, "text/occi")
    r = occi.send(
        "GET",
        "/-/",
        headers={"Category": 'link; scheme="http://schemas.ogf.org/occi/core#"; class="kind"'},
    )
    assert r.status_code == 200, r.text
    ids = [ref.id for ref in parse_categories(Format.TEXT_OCCI, r.content, r.headers.raw)]
    assert ids == [CORE + "link", STORAGELINK, NETWORKINTERFACE]
    r = occi.send("GET", "/-/", headers={"Category": 'nothing; scheme="http://example.com/x#"'})
    assert r.status_code == 200 and parse_categories(Format.TEXT_OCCI, b"", r.headers.raw) == []
    for method in ("POST", "DELETE", "PUT"):
        r = user.request(method, "/-/")
        assert_refused(r, 405, "no user-defined mixins")
        assert r.headers["allow"] == "GET, HEAD"


# -- compute: create, read, update, actions, delete ---------------------------------


@pytest.mark.parametrize("media", MEDIA)
def test_compute_lifecycle(cloud: Cloud, user: httpx.Client, media: str) -> None:
    """No attributes at all: the defaults; then read, replace, update,
    restart and stop (power off) in one rendering."""
    occi = Occi(user, media)
    try:
        location, made = occi.create("/compute/", compute())
        server = ident(location)
        assert location == f"{cloud.url}/compute/{server}"  # absolute, on the request's host
        assert the_qemu(cloud, server)  # 201 means it runs
        attributes = made.attributes
        assert attributes["occi.core.id"] == server
        assert attributes["occi.compute.state"] == "active"
        assert (attributes["occi.compute.cores"], attributes["occi.compute.memory"]) == (1, 0.5)
        assert attributes["occi.compute.speed"] == 2.0
        assert made.mixins == (RESOURCE_TPL + "small",)  # the defaults are the small size
        assert set(made.actions) == {ACTION + t for t in ("stop", "restart", "suspend")}
        eh = info(user, server)
        assert (eh["status"], eh["cpu"], eh["mem"], eh["smp"]) == ("active", "2000", "512", "1")

        read = occi.read(occi.send("GET", location))
        assert read.attributes == made.attributes
        assert occi.listing("/compute/") == [server if occi.fmt is Format.JSON else location]

        # PUT what was read, title changed: immutable attributes come back as read
        title = f"web \u00e9 {media}"
        replaced = EntityRendering(
            kind=read.kind,
            mixins=read.mixins,
            attributes={**read.attributes, "occi.core.title": title},
            links=read.links,
            actions=read.actions,
            location=read.location,
        )
        put = occi.read(occi.send("PUT", location, replaced))
        assert put.attributes["occi.core.title"] == title
        assert info(user, server)["name"] == title
        # POST: a partial update; speed is live, a new summary and hostname too
        partial = compute(compute__speed=1.0, core__summary="a test", compute__hostname="web")
        updated = occi.read(occi.send("POST", location, partial))
        assert updated.attributes["occi.compute.speed"] == 1.0
        assert updated.mixins == ()  # 1 GHz is no template's size any more
        eh = info(user, server)
        assert (eh["cpu"], eh["user:occi.summary"], eh["user:occi.hostname"]) == (
            "1000",
            "a test",
            "web",
        )
        pid = the_qemu(cloud, server)
        again = occi.read(occi.act(location, "restart"))
        assert again.attributes["occi.compute.state"] == "active"
        assert the_qemu(cloud, server) == pid  # a reset, not a new guest
        # stop pulling the plug: a non-persistent compute ceases to exist
        gone = occi.read(occi.act(location, "stop", method="poweroff"))
        assert gone.attributes["occi.compute.state"] == "inactive"
        assert occi.send("GET", location).status_code == 404
        assert server not in listed(user)
        assert not qemu_pids(cloud, server)
    finally:
        occi.cleanup()


def test_compute_delete_and_creation_order(cloud: Cloud, user: httpx.Client) -> None:
    occi = Occi(user, "text/occi")
    try:
        locations = [occi.create("/compute/", tiny(core__title=f"n{i}"))[0] for i in range(3)]
        assert occi.listing("/compute/") == locations
        # every resource: computes, storage (none), networks (the public one)
        assert Occi(user, "application/json").listing("/resource/") == [
            *(ident(x) for x in locations),
            "public",
        ]
        r = occi.send("DELETE", locations[1])
        assert r.status_code == 200 and r.headers["content-type"] == "text/occi"
        assert occi.listing("/compute/") == [locations[0], locations[2]]
        assert not qemu_pids(cloud, ident(locations[1]))
        assert occi.send("DELETE", locations[1]).status_code == 404
        # the tiny size: 1 core of 0.5 GHz and 128 MiB
        eh = info(user, ident(locations[0]))
        assert (eh["cpu"], eh["mem"], eh["name"]) == ("500", "128", "n0")
        assert occi.listing("/resource_tpl/tiny/") == [locations[0], locations[2]]
    finally:
        occi.cleanup()


def test_collection_actions_and_delete(cloud: Cloud, user: httpx.Client) -> None:
    """GFD.223 on a collection: an action goes to every entity that offers
    it now; DELETE removes every entity. Needs ServerService.suspend."""
    occi = Occi(user, "text/plain")
    try:
        first, _ = occi.create("/compute/", tiny())
        second, _ = occi.create("/compute/", tiny(PERSISTENT))
        occi.act(second, "suspend")
        head = user.head(first, headers={"Accept": "text/plain"})
        assert head.status_code == 200 and head.content == b""
        r = occi.act("/compute/", "suspend")  # the second is suspended already
        assert parse_collection(Format.TEXT_PLAIN, r.content).locations == (first,)
        for location in (first, second):
            assert info(user, ident(location))["status"] == "paused"
        r = occi.send("DELETE", "/compute/")
        assert r.status_code == 200, r.text
        assert listed(user) == []
        assert not qemu_pids(cloud, ident(first)) and not qemu_pids(cloud, ident(second))
    finally:
        occi.cleanup()


def test_rendering_matches_the_ogf_examples(cloud: Cloud, user: httpx.Client) -> None:
    """GFD.229 §6.1's compute, created inactive, reads back as the example
    does (bar its id, x86 and our state.message); GFD.226 A.1's JSON members."""
    occi = Occi(user, "text/plain")
    try:
        location, _ = occi.create(
            "/compute/",
            compute(
                core__title="My Dummy VM",
                compute__cores=2,
                compute__memory=2.0,
                compute__speed=1.33,
                compute__hostname="dummy",
                compute__state="inactive",
            ),
        )
        assert info(user, ident(location))["status"] == "stopped"
        ours = occi.send("GET", location).text.splitlines()
        example_id = "b9ff813e-fee5-4a9d-b839-673f39746096"
        theirs = [
            line.replace('#" class', '#"; class')
            .removesuffix(";")
            .replace(f"/users/foo/compute/{example_id}", location)
            .replace(f"urn:uuid:{example_id}", ident(location))
            .replace('"x86"', '"x64"')
            for line in transcript(GFD229_TEXT_PLAIN)
        ]
        assert ours[:2] == theirs[:2]  # the Category line, then the one action: start
        assert set(ours) - set(theirs) == {'X-OCCI-Attribute: occi.compute.state.message="stopped"'}
        assert set(theirs) <= set(ours)
        # GFD.226: the JSON members of a resource and its links
        example = json.loads(_fix_location_typo(GFD226_RESOURCE))
        server = ident(location)
        r = user.post(f"/compute/{server}?action=start", headers={"Accept": "application/json"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) <= set(example) | {"title", "summary"}
        assert body["kind"] == example["kind"] and body["id"] == server
        assert body["attributes"]["occi.compute.state"] == "active"
    finally:
        occi.cleanup()


def test_persistent_compute_stops_inactive_and_starts(cloud: Cloud, user: httpx.Client) -> None:
    occi = Occi(user, "application/occi+json")
    try:
        location, made = occi.create("/compute/", tiny(PERSISTENT))
        server = ident(location)
        assert set(made.mixins) == {RESOURCE_TPL + "tiny", PERSISTENT}
        assert info(user, server)["persistent"] == "true"
        assert occi.listing("/persistent/") == [server]
        stopped = occi.read(occi.act(location, "stop", method="poweroff"))
        assert stopped.attributes["occi.compute.state"] == "inactive"
        assert stopped.actions == (ACTION + "start",)
        assert not qemu_pids(cloud, server)
        # inapplicable: 409 with a message, nothing changed
        r = occi.act(location, "restart", 409)
        assert "inactive" in r.text and "restart" in r.text
        assert info(user, server)["status"] == "stopped"
        started = occi.read(occi.act(location, "start"))
        assert started.attributes["occi.compute.state"] == "active"
        assert the_qemu(cloud, server)
        r = occi.act(location, "start", 409)
        assert "active" in r.text
        # PUT without the persistent mixin: no longer persistent
        current = occi.read(occi.send("GET", location))
        plain = EntityRendering(
            kind=COMPUTE, mixins=(RESOURCE_TPL + "tiny",), attributes=current.attributes
        )
        assert PERSISTENT not in occi.read(occi.send("PUT", location, plain)).mixins
        assert info(user, server)["persistent"] == "false"
    finally:
        occi.cleanup()


def test_suspend_and_start(cloud: Cloud, user: httpx.Client) -> None:
    """Needs ServerService.suspend and .resume."""
    occi = Occi(user, "text/plain")
    try:
        location, _ = occi.create("/compute/", tiny())
        server = ident(location)
        pid = the_qemu(cloud, server)
        suspended = occi.read(occi.act(location, "suspend"))
        assert suspended.attributes["occi.compute.state"] == "suspended"
        assert suspended.actions == (ACTION + "start",)
        assert info(user, server)["status"] == "paused"
        assert occi.act(location, "suspend", 409).text
        assert "suspended" in occi.act(location, "restart", 409).text
        assert occi.act(location, "suspend", 501, method="hibernate").text
        resumed = occi.read(occi.act(location, "start"))
        assert resumed.attributes["occi.compute.state"] == "active"
        assert info(user, server)["status"] == "active"
        assert the_qemu(cloud, server) == pid  # the same guest, resumed
    finally:
        occi.cleanup()


# -- storage, networks and links ------------------------------------------------------


@pytest.mark.parametrize("media", ["text/occi", "application/occi+json"])
def test_storage_lifecycle(user: httpx.Client, media: str) -> None:
    occi = Occi(user, media)
    try:
        location, made = occi.create(
            "/storage/",
            EntityRendering(
                kind=STORAGE,
                attributes={"occi.core.title": "data", "occi.storage.size": 0.001},
            ),
        )
        drive = ident(location)
        size = int(records(user.get(f"/drives/{drive}/info").text)[0]["size"])
        assert size % 512 == 0 and abs(size - 0.001 * (1 << 30)) < 512
        assert made.attributes["occi.storage.size"] == size / (1 << 30)
        assert made.attributes["occi.storage.state"] == "online"
        # what was read goes back unchanged: the same size in bytes
        read = occi.read(occi.send("GET", location))
        occi.read(occi.send("PUT", location, read))
        assert int(records(user.get(f"/drives/{drive}/info").text)[0]["size"]) == size
        renamed = occi.read(
            occi.send(
                "POST",
                location,
                EntityRendering(kind=STORAGE, attributes={"occi.core.title": "renamed"}),
            )
        )
        assert renamed.attributes["occi.core.title"] == "renamed"
        invocation = ActionInvocation(
            action="http://schemas.ogf.org/occi/infrastructure/storage/action#resize",
            attributes={"size": 0.5},
        )
        resized = occi.read(occi.send("POST", f"{location}?action=resize", action=invocation))
        assert resized.attributes["occi.storage.size"] == 0.5
        snapshot = ActionInvocation(
            action="http://schemas.ogf.org/occi/infrastructure/storage/action#snapshot"
        )
        assert_refused(
            occi.send("POST", f"{location}?action=snapshot", action=snapshot), 501, "snapshot"
        )
        assert occi.send("DELETE", location).status_code == 200
        assert occi.send("GET", location).status_code == 404
    finally:
        occi.cleanup()


def test_networks(cloud: Cloud, user: httpx.Client, pool: str) -> None:
    occi = Occi(user, "text/plain")
    try:
        public = occi.read(occi.send("GET", "/network/public"))
        assert public.mixins == (IPNETWORK,)
        assert public.attributes["occi.network.state"] == "active"
        assert "occi.network.address" in public.attributes
        occi.read(occi.send("PUT", "/network/public", public))  # unchanged: fine
        assert_refused(occi.send("DELETE", "/network/public"), 403, "shared")
        changed = EntityRendering(kind=NETWORK, attributes={"occi.core.title": "mine"})
        assert_refused(occi.send("POST", "/network/public", changed), 403, "cannot change")

        location, made = occi.create("/network/", changed)
        vlan = ident(location)
        assert made.attributes["occi.core.title"] == "mine"
        assert vlan in user.get("/resources/vlan/list").text
        assert occi.listing("/network/") == [f"{cloud.url}/network/public", location]
        assert occi.listing("/ipnetwork/") == [f"{cloud.url}/network/public"]
        assert occi.send("DELETE", location).status_code == 200
        assert vlan not in user.get("/resources/vlan/list").text
    finally:
        occi.cleanup()


def test_compute_with_links(cloud: Cloud, user: httpx.Client, pool: str) -> None:
    """A compute made with a storagelink and two networkinterfaces in one
    create (GFD.226 inline links): ElasticHosts device and NIC keys."""
    occi = Occi(user, "application/occi+json")
    try:
        storage, _ = occi.create(
            "/storage/", EntityRendering(kind=STORAGE, attributes={"occi.storage.size": 0.001})
        )
        network, _ = occi.create("/network/", EntityRendering(kind=NETWORK))
        r = user.post("/resources/ip/create")
        assert r.status_code == 200, r.text
        ip = records(r.text)[0]["resource"]
        links = (
            EntityRendering(
                kind=STORAGELINK,
                attributes={
                    "occi.core.target": storage,
                    "occi.core.target.kind": STORAGE,
                    "occi.storagelink.deviceid": "ide:0:1",
                },
            ),
            EntityRendering(
                kind=NETWORKINTERFACE,
                attributes={"occi.core.target": network, "occi.core.target.kind": NETWORK},
            ),
            EntityRendering(
                kind=NETWORKINTERFACE,
                mixins=(IPNETWORKINTERFACE,),
                attributes={
                    "occi.core.target": "/network/public",  # a path is a location too
                    "occi.core.target.kind": NETWORK,
                    "occi.networkinterface.address": ip,
                    "occi.networkinterface.mac": "52:54:00:0c:cc:01",
                },
            ),
        )
        location, made = occi.create("/compute/", tiny(links=links))
        server = ident(location)
        eh = info(user, server)
        assert eh["ide:0:1"] == ident(storage)
        assert eh["nic:0:vlan"] == ident(network)
        assert (eh["nic:1:dhcp:ip"], eh["nic:1:mac"]) == (ip, "52:54:00:0c:cc:01")
        disk, private, public = made.links
        assert disk.kind == STORAGELINK and disk.target == storage
        assert disk.source == location
        assert disk.attributes["occi.storagelink.deviceid"] == "ide:0:1"
        assert private.target == network and private.mixins == ()
        assert public.mixins == (IPNETWORKINTERFACE,)
        assert public.attributes["occi.networkinterface.address"] == ip
        assert public.attributes["occi.networkinterface.gateway"] == GATEWAY
        assert public.attributes["occi.networkinterface.interface"] == "nic:1"
        # the links are entities of their own, listed and read in every rendering
        disk_at = f"{cloud.url}/storagelink/{server}_ide:0:1"
        nic_at = f"{cloud.url}/networkinterface/{server}_nic:1"
        for media in MEDIA:
            other = Occi(user, media)
            read = other.read(other.send("GET", disk_at))
            assert read.target == storage and read.source == location
            read = other.read(other.send("GET", nic_at))
            assert read.attributes["occi.networkinterface.mac"] == "52:54:00:0c:cc:01"
        text = Occi(user, "text/plain")
        assert text.listing("/storagelink/") == [disk_at]
        assert text.listing("/networkinterface/")[1] == nic_at
        assert text.listing("/ipnetworkinterface/") == [nic_at]
        assert len(text.listing("/link/")) == 3
        # a link sent back as read is fine; a change is refused, nothing changed
        read = text.read(text.send("GET", nic_at))
        text.read(text.send("PUT", nic_at, read))
        moved = EntityRendering(
            kind=NETWORKINTERFACE,
            mixins=read.mixins,
            attributes={**read.attributes, "occi.networkinterface.mac": "52:54:00:0c:cc:02"},
        )
        assert_refused(text.send("PUT", nic_at, moved), 400, "cannot change")
        assert info(user, server)["nic:1:mac"] == "52:54:00:0c:cc:01"
        # the drive is claimed while attached: deleting the storage is a conflict
        assert_refused(user.delete(storage), 409, "claimed")
        # the storage is a GET away from the link
        assert occi.read(occi.send("GET", disk.target or "")).id == ident(storage)
    finally:
        occi.cleanup()
        user.post(f"/resources/ip/{ip}/destroy")


def test_hot_plug_links(cloud: Cloud, user: httpx.Client) -> None:
    """Links made and deleted on a running compute are hot-plugged into the
    same guest; on an inactive one they are configuration. Needs
    ServerService.attach_drive, detach_drive, attach_nic and detach_nic."""
    occi = Occi(user, "text/plain")
    try:
        storage, _ = occi.create(
            "/storage/", EntityRendering(kind=STORAGE, attributes={"occi.storage.size": 0.001})
        )
        cdrom, _ = occi.create(
            "/storage/", EntityRendering(kind=STORAGE, attributes={"occi.storage.size": 0.001})
        )
        location, _ = occi.create("/compute/", tiny(PERSISTENT))
        server = ident(location)
        pid = the_qemu(cloud, server)
        link = EntityRendering(
            kind=STORAGELINK,
            attributes={"occi.core.source": location, "occi.core.target": storage},
        )
        r = occi.send("POST", "/storagelink/", link)
        made = occi.read(r, 201)
        device = made.attributes["occi.storagelink.deviceid"]
        assert device == "scsi:0:0"  # IDE cannot be hot-plugged: the first SCSI slot
        assert r.headers["location"] == f"{cloud.url}/storagelink/{server}_{device}"
        assert made.attributes["occi.storagelink.state"] == "active"
        assert info(user, server)[device] == ident(storage)
        nic = EntityRendering(
            kind=NETWORKINTERFACE,
            attributes={"occi.core.source": location, "occi.core.target": "/network/public"},
        )
        r = occi.send("POST", "/networkinterface/", nic)
        made_nic = occi.read(r, 201)
        nic_at = r.headers["location"]
        assert made_nic.attributes["occi.networkinterface.interface"] == "nic:0"
        assert info(user, server)["nic:0:model"] == "virtio"
        assert the_qemu(cloud, server) == pid  # the same guest all along
        # an IDE slot cannot be hot-plugged: 409, nothing changed
        ide = EntityRendering(
            kind=STORAGELINK,
            attributes={
                "occi.core.source": location,
                "occi.core.target": cdrom,
                "occi.storagelink.deviceid": "ide:0:1",
            },
        )
        assert occi.send("POST", "/storagelink/", ide).status_code == 409
        assert "ide:0:1" not in info(user, server)
        # a SCSI disk comes out of a running guest
        assert occi.send("DELETE", f"/storagelink/{server}_{device}").status_code == 200
        assert device not in info(user, server)
        assert the_qemu(cloud, server) == pid
        # inactive: links are configuration, the next start has them
        occi.act(location, "stop", method="poweroff")
        assert occi.send("DELETE", nic_at).status_code == 200
        cold = EntityRendering(
            kind=STORAGELINK,
            attributes={"occi.core.source": location, "occi.core.target": cdrom},
        )
        made = occi.read(occi.send("POST", "/storagelink/", cold), 201)
        assert made.attributes["occi.storagelink.deviceid"] == "ide:0:0"
        assert made.attributes["occi.storagelink.state"] == "inactive"
        started = occi.read(occi.act(location, "start"))
        assert [link.target for link in started.links] == [cdrom]
        eh = info(user, server)
        assert eh["ide:0:0"] == ident(cdrom) and "nic:0:model" not in eh
    finally:
        occi.cleanup()


def test_os_template_boots_and_stop_is_the_power_button(
    cloud: Cloud, guest: str, user: httpx.Client
) -> None:
    """An os_tpl compute: a new drive imaged from the library, booted; the
    stop action presses the ACPI button and the compute ceases to exist."""
    occi = Occi(user, "text/plain")
    try:
        location, made = occi.create(
            "/compute/", compute(OS_TPL + guest, RESOURCE_TPL + "small", core__title="booted")
        )
        server = ident(location)
        assert set(made.mixins) == {OS_TPL + guest, RESOURCE_TPL + "small"}
        (disk,) = made.links
        assert disk.attributes["occi.storagelink.deviceid"] == "ide:0:0"
        drive = ident(disk.target or "")
        eh = info(user, server)
        assert (eh["ide:0:0"], eh["boot"]) == (drive, "ide:0:0")
        assert drive in [ident(x) for x in occi.listing("/storage/")]
        assert occi.listing(f"/os_tpl/{guest}/") == [location]
        wait_for(
            "the guest to boot", lambda: b"OVERCAST-GUEST-UP" in serial(cloud, server), 90, 0.1
        )
        occi.act(location, "stop")  # acpioff, the default method
        seen = b""

        def gone() -> bool:
            nonlocal seen
            seen = serial(cloud, server) or seen  # the run directory goes with the compute
            return occi.send("GET", location).status_code == 404

        wait_for("the compute to cease", gone, 60, 0.01)
        assert b"OVERCAST-POWERING-OFF button" in seen
        assert not qemu_pids(cloud, server)
        # the drive is the user's: it stays, released
        assert occi.send("GET", disk.target or "").status_code == 200
        occi.made.append(disk.target or "")
    finally:
        occi.cleanup()


# -- bad input ------------------------------------------------------------------------


def _state(http: httpx.Client) -> tuple[str, str, str]:
    """What a refused request must leave as it was."""
    return (
        http.get("/servers/info").text,
        http.get("/drives/list").text,
        http.get("/resources/vlan/list").text,
    )


KIND = b'Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
STORAGE_KIND = KIND.replace(b"compute", b"storage")
IPNETWORK_MIXIN = (
    b'Category: ipnetwork; scheme="http://schemas.ogf.org/occi/infrastructure/network#"; '
    b'class="mixin"\n'
)

BAD_CREATES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    # (case, content type, body, headers, status, message fragment)
    (
        "unknown kind",
        "text/plain",
        b'Category: vm; scheme="http://example.com/x#"; class="kind"\n',
        {},
        400,
        "unknown kind",
    ),
    ("no kind", "text/plain", b'X-OCCI-Attribute: occi.core.title="x"\n', {}, 400, "no kind"),
    (
        "wrong kind",
        "text/plain",
        STORAGE_KIND + b"X-OCCI-Attribute: occi.storage.size=1\n",
        {},
        400,
        "cannot be created in /compute/",
    ),
    (
        "unknown mixin",
        "text/plain",
        KIND + b'Category: huge; scheme="http://overcast.invalid/occi/resource_tpl#"; '
        b'class="mixin"\n',
        {},
        400,
        "unknown mixin",
    ),
    (
        "mixin not for compute",
        "text/plain",
        KIND + IPNETWORK_MIXIN,
        {},
        400,
        "does not apply",
    ),
    (
        "wrong type",
        "text/plain",
        KIND + b'X-OCCI-Attribute: occi.compute.cores="two"\n',
        {},
        400,
        "occi.compute.cores: expected a number",
    ),
    (
        "unknown attribute",
        "text/plain",
        KIND + b"X-OCCI-Attribute: occi.compute.gpus=1\n",
        {},
        400,
        "occi.compute.gpus: not an attribute",
    ),
    (
        "too big",
        "application/occi+json",
        json.dumps({"kind": COMPUTE, "attributes": {"occi.compute.memory": 1024.0}}).encode(),
        {},
        400,
        "occi.compute.memory",
    ),
    (
        "x86",
        "application/occi+json",
        json.dumps({"kind": COMPUTE, "attributes": {"occi.compute.architecture": "x86"}}).encode(),
        {},
        400,
        "x64",
    ),
    (
        "our id",
        "application/occi+json",
        json.dumps({"kind": COMPUTE, "id": "mine"}).encode(),
        {},
        400,
        "occi.core.id",
    ),
    ("malformed text", "text/plain", b"Category compute\n", {}, 400, "line 1"),
    ("malformed json", "application/occi+json", b'{"kind": ', {}, 400, "not JSON"),
    (
        "malformed header",
        "text/occi",
        b"",
        {"Category": 'compute; scheme="unterminated'},
        400,
        "not closed",
    ),
    (
        "missing drive",
        "application/occi+json",
        json.dumps(
            {
                "kind": COMPUTE,
                "links": [
                    {
                        "kind": STORAGELINK,
                        "target": {"location": "/storage/00000000-0000-4000-8000-000000000000"},
                    }
                ],
            }
        ).encode(),
        {},
        404,
        "no drive",
    ),
    (
        "a link to nowhere",
        "application/occi+json",
        json.dumps(
            {
                "kind": COMPUTE,
                "links": [
                    {
                        "kind": STORAGELINK,
                        "target": {"location": "http://elsewhere.example/storage/x"},
                    }
                ],
            }
        ).encode(),
        {},
        400,
        "not a location",
    ),
    (
        "bad device",
        "application/occi+json",
        json.dumps(
            {
                "kind": COMPUTE,
                "links": [
                    {
                        "kind": STORAGELINK,
                        "target": {"location": "/storage/x"},
                        "attributes": {"occi.storagelink.deviceid": "sda"},
                    }
                ],
            }
        ).encode(),
        {},
        400,
        "deviceid",
    ),
    ("not a rendering", "application/xml", b"<compute/>", {}, 415, "not an OCCI rendering"),
    ("not acceptable", "text/plain", b"", {"Accept": "image/png"}, 406, "image/png"),
    ("a newer OCCI", "text/plain", b"", {"User-Agent": "client/1 OCCI/1.3"}, 501, "OCCI/1.3"),
]


@pytest.mark.parametrize(
    ("case", "ctype", "body", "headers", "status", "says"),
    BAD_CREATES,
    ids=[c[0] for c in BAD_CREATES],
)
def test_bad_creates_change_nothing(
    user: httpx.Client,
    case: str,
    ctype: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    before = _state(user)
    r = user.post("/compute/", content=body, headers={"Content-Type": ctype, **headers})
    assert_refused(r, status, says)
    assert _state(user) == before, case


def test_bad_requests_on_entities(cloud: Cloud, user: httpx.Client) -> None:
    occi = Occi(user, "text/plain")
    try:
        location, made = occi.create("/compute/", tiny())
        before = _state(user)
        # an action the state does not allow, one the kind does not have, a method
        assert "active" in occi.act(location, "start", 409).text
        r = user.post(f"{location}?action=up")
        assert_refused(r, 400, "no action 'up'")
        assert_refused(occi.act(location, "restart", 501, method="graceful"), 501, "graceful")
        assert_refused(occi.act(location, "stop", 400, method="now"), 400, "method")
        wrong = ActionInvocation(action=ACTION + "stop")
        assert_refused(occi.send("POST", f"{location}?action=start", action=wrong), 400, "invokes")
        # immutable attributes changed, a size that cannot change while running
        changed = EntityRendering(
            kind=COMPUTE, attributes={**made.attributes, "occi.core.id": "other"}
        )
        assert_refused(occi.send("PUT", location, changed), 400, "occi.core.id: cannot be changed")
        bigger = compute(compute__memory=1.0)
        assert_refused(occi.send("POST", location, bigger), 409, "mem cannot change")
        assert _state(user) == before
        # the wrong method, missing things
        assert_refused(user.put("/compute/"), 405, "not on this collection")
        assert user.put("/compute/").headers["allow"] == "GET, HEAD, POST, DELETE"
        assert_refused(user.get("/compute/nonsense"), 404, "no compute")
        assert_refused(user.get("/compute/00000000-0000-4000-8000-000000000000"), 404, "no server")
        assert_refused(user.get("/storagelink/nonsense_ide:0:0"), 404, "no storagelink")
        assert_refused(user.get("/os_tpl/nothing/"), 404, "no collection")
        assert_refused(user.post("/persistent/"), 405, "mixins are chosen")
        # another user sees nothing of this one's
        with new_user(cloud, "other") as other:
            assert_refused(other.get(location), 404, "no server")
            assert Occi(other).listing("/compute/") == []
        assert_refused(httpx.get(location), 401, "Basic")
        assert the_qemu(cloud, ident(location))
    finally:
        occi.cleanup()


_VALID = (
    'Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
    'Category: tiny; scheme="http://overcast.invalid/occi/resource_tpl#"; class="mixin"\n'
    'X-OCCI-Attribute: occi.core.title="fuzz"\n'
    "X-OCCI-Attribute: occi.compute.cores=1\n"
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid text/plain compute with a few characters changed."""
    text = _VALID
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(st.text(max_size=3)) + text[at + cut :]
    return text


@given(body=mutated() | st.text(max_size=80))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_bodies_are_created_or_refused(user: httpx.Client, body: str) -> None:
    """Whatever arrives: 201 (then it runs and is removed) or a 4xx with a
    message; never a 5xx, and a refusal changes nothing."""
    before = listed(user)
    r = user.post(
        "/compute/",
        content=body.encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "text/plain"},
    )
    if r.status_code == 201:
        assert user.delete(r.headers["location"]).status_code == 200
    else:
        assert 400 <= r.status_code < 500 and r.text.strip(), (r.status_code, r.text)
    assert listed(user) == before


@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["kind", "mixins", "attributes", "links", "id", "x"]),
                inner,
                max_size=4,
            )
        ),
        max_leaves=8,
    )
)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_json_is_refused_cleanly(user: httpx.Client, body: object) -> None:
    before = listed(user)
    r = user.post(
        "/compute/",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/occi+json"},
    )
    assert 400 <= r.status_code < 500 and r.text.strip(), (r.status_code, r.text)
    assert listed(user) == before


def test_quota_is_forbidden(cloud: Cloud, admin: httpx.Client) -> None:
    """An ElasticHosts error in OCCI terms: over quota is 403 (GFD.223's
    list has no 402), with the same message."""
    with new_user(cloud, "capped") as http:
        me = records(http.get("/user/info").text)[0]["user"]
        r = admin.post(f"/users/{me}/set", content="quota:servers 0\n")
        assert r.status_code == 200, r.text
        before = _state(http)
        r = http.post(
            "/compute/",
            content=KIND,
        )
        assert_refused(r, 403, "quota")
        assert r.headers["x-elastic-error"] == "billing"
        assert _state(http) == before


def test_locations_follow_the_request_host(cloud: Cloud, user: httpx.Client) -> None:
    port = cloud.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=f"http://localhost:{port}", auth=user.auth, timeout=30) as local:
        occi = Occi(local, "text/plain")
        try:
            location, _ = occi.create("/compute/", tiny())
            assert location.startswith(f"http://localhost:{port}/compute/")
            assert all(
                link.startswith(f"<http://localhost:{port}/")
                for link in re.findall(r"<[^>]+>", occi.send("GET", location).text)
            )
        finally:
            occi.cleanup()
