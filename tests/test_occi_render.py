"""The OCCI category registry and the three renderings, without HTTP.

The renderings are the first thing an OCCI request meets, so, as for the
ElasticHosts codec, their contract is checked over generated input: whatever
arrives, parsing yields a rendering or an ``OcciParseError`` (never another
exception); whatever a parser accepts, the renderers write out and the same
rendering's parser reads back unchanged. The examples printed in the OGF
documents are parsed as published (or, where the published text is itself
malformed, shown to be rejected and parsed once corrected). Section numbers
are those of the documents' LaTeX sources (github.com/occiware/occi-wg).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from overcast.api.occi import categories as c
from overcast.api.occi.categories import (
    ATTRIBUTE_NAME,
    Attribute,
    Kind,
    Mixin,
    Problem,
    Registry,
    check_action,
    check_attributes,
    check_mixins,
    defaults,
    filter_categories,
    os_template,
    query_interface,
    resource_template,
    slug,
    split_id,
)
from overcast.api.occi.render import (
    ActionInvocation,
    AttributeRef,
    CategoryRef,
    EntityRendering,
    Format,
    OcciParseError,
    Rendered,
    format_of,
    negotiate,
    parse_action,
    parse_categories,
    parse_collection,
    parse_entity,
    render_action,
    render_categories,
    render_collection,
    render_entity,
)
from overcast.model.errors import UsageError

CORE = "http://schemas.ogf.org/occi/core#"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
COMPUTE_ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
STORAGE_ACTION = "http://schemas.ogf.org/occi/infrastructure/storage/action#"
NETWORK_ACTION = "http://schemas.ogf.org/occi/infrastructure/network/action#"
ALL_FORMATS = list(Format)
TEXT_FORMATS = [Format.TEXT_PLAIN, Format.TEXT_OCCI]


# -- helpers ---------------------------------------------------------------------


def transcript(text: str) -> list[str]:
    """The OGF documents print exchanges as ``< `` lines folded with ``\\``."""
    lines: list[str] = []
    pending = ""
    for raw in text.strip("\n").split("\n"):
        line = raw.removeprefix("< ").strip() if raw.startswith("<") else raw.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def wire(rendered: Rendered) -> Headers:
    """Headers as a server sees them after the client sent ``rendered``:
    Starlette keeps the bytes and decodes them as latin-1."""
    return Headers(
        raw=[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in rendered.headers]
    )


def send(rendered: Rendered, fmt: Format) -> dict[str, Any]:
    """What parse_* gets for a rendering in ``fmt``."""
    return {"body": rendered.body, "headers": wire(rendered) if fmt is Format.TEXT_OCCI else ()}


def typed(value: object) -> object:
    """Compare values with their types: ``2 == 2.0 == True`` in Python."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def same_entity(a: EntityRendering, b: EntityRendering) -> bool:
    return typed(_entity_tree(a)) == typed(_entity_tree(b))


def _entity_tree(e: EntityRendering) -> dict[str, object]:
    return {
        "kind": e.kind,
        "mixins": list(e.mixins),
        "attributes": dict(e.attributes),
        "actions": list(e.actions),
        "links": [_entity_tree(link) for link in e.links],
        "location": e.location,
    }


def carried(e: EntityRendering, fmt: Format) -> EntityRendering:
    """What of ``e`` a rendering carries: JSON has no locations; the text
    renderings show a resource's location only through its action links."""
    if fmt is Format.JSON:
        return replace(e, location=None, links=tuple(replace(k, location=None) for k in e.links))
    return replace(e, location=e.location if e.actions else None)


# -- strategies ------------------------------------------------------------------

terms = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True)
schemes = st.sampled_from(
    [CORE, INFRA, COMPUTE_ACTION, c.OS_TPL_SCHEME, "http://example.com/occi/x#", "urn:x:y#"]
) | st.from_regex(r"https?://[a-z0-9.-]{1,12}(:[0-9]{1,5})?/[a-z0-9/._~-]{0,12}#", fullmatch=True)
type_ids = st.builds(lambda scheme, term: scheme + term, schemes, terms)
names = st.from_regex(r"[a-z][a-z0-9_-]{0,6}(\.[a-z0-9_-]{1,6}){0,3}", fullmatch=True)
link_attribute_names = names.filter(lambda n: n not in ("rel", "self", "category"))
texts = st.text(
    st.characters(
        exclude_categories=("Cc", "Cs"),
        exclude_characters="\u2028\u2029",
        include_characters="\t",
    ),
    max_size=24,
)
scalars = st.one_of(
    texts,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
hosts = st.sampled_from(["localhost:8080", "127.0.0.1:9", "example.com", "[::1]:80"])
uris = st.builds(
    lambda host, path, u: f"http://{host}/{path}/{u}",
    hosts,
    st.sampled_from(["compute", "storage", "network", "storagelink"]),
    st.uuids(),
)


@st.composite
def links(draw: st.DrawFn) -> EntityRendering:
    attributes = draw(st.dictionaries(link_attribute_names, scalars, max_size=4))
    attributes["occi.core.target"] = draw(uris)
    attributes["occi.core.target.kind"] = draw(type_ids)
    return EntityRendering(
        kind=draw(type_ids),
        mixins=tuple(draw(st.lists(type_ids, unique=True, max_size=2))),
        attributes=attributes,
        location=draw(st.none() | uris),
    )


@st.composite
def entities(draw: st.DrawFn) -> EntityRendering:
    return EntityRendering(
        kind=draw(type_ids),
        mixins=tuple(draw(st.lists(type_ids, unique=True, max_size=3))),
        attributes=draw(st.dictionaries(names, scalars, max_size=6)),
        actions=tuple(draw(st.lists(type_ids, unique=True, max_size=3))),
        links=tuple(draw(st.lists(links(), max_size=2))),
        location=draw(uris),
    )


invocations = st.builds(
    lambda action, attributes: ActionInvocation(action=action, attributes=attributes),
    type_ids,
    st.dictionaries(names, scalars, max_size=4),
)


# -- the OGF documents' examples ---------------------------------------------------

# GFD.229 (Text Rendering) §6.1 "Example" (of §6, OCCI Text Plain rendering).
GFD229_TEXT_PLAIN = r"""
< Category: compute; \
<     scheme="http://schemas.ogf.org/occi/infrastructure#" \
<     class="kind";
< Link: </users/foo/compute/b9ff813e-fee5-4a9d-b839-673f39746096?action=start>; \
<     rel="http://schemas.ogf.org/occi/infrastructure/compute/action#start"
< X-OCCI-Attribute: occi.core.id="urn:uuid:b9ff813e-fee5-4a9d-b839-673f39746096"
< X-OCCI-Attribute: occi.core.title="My Dummy VM"
< X-OCCI-Attribute: occi.compute.architecture="x86"
< X-OCCI-Attribute: occi.compute.state="inactive"
< X-OCCI-Attribute: occi.compute.speed=1.33
< X-OCCI-Attribute: occi.compute.memory=2.0
< X-OCCI-Attribute: occi.compute.cores=2
< X-OCCI-Attribute: occi.compute.hostname="dummy"
"""

# GFD.229 (Text Rendering) §7.1 "Example" (of §7, OCCI Header Rendering): the same
# entity as text/occi headers.
GFD229_TEXT_OCCI = r"""
< Category: compute; \
    scheme="http://schemas.ogf.org/occi/infrastructure#" \
    class="kind";
< Link: </users/foo/compute/b9ff813e-fee5-4a9d-b839-673f39746096?action=start>; \
    rel="http://schemas.ogf.org/occi/infrastructure/compute/action#start"
< X-OCCI-Attribute: occi.core.id="urn:uuid:b9ff813e-fee5-4a9d-b839-673f39746096", \
 occi.core.title="My Dummy VM", occi.compute.architecture="x86", \
 occi.compute.state="inactive", occi.compute.speed=1.33, \
 occi.compute.memory=2.0, occi.compute.cores=2, \
 occi.compute.hostname="dummy"
< OK
"""

GFD229_ENTITY = EntityRendering(
    kind=INFRA + "compute",
    attributes={
        "occi.core.id": "urn:uuid:b9ff813e-fee5-4a9d-b839-673f39746096",
        "occi.core.title": "My Dummy VM",
        "occi.compute.architecture": "x86",
        "occi.compute.state": "inactive",
        "occi.compute.speed": 1.33,
        "occi.compute.memory": 2.0,
        "occi.compute.cores": 2,
        "occi.compute.hostname": "dummy",
    },
    actions=(COMPUTE_ACTION + "start",),
    location="/users/foo/compute/b9ff813e-fee5-4a9d-b839-673f39746096",
)


def test_gfd229_text_plain_example() -> None:
    body = "\n".join(transcript(GFD229_TEXT_PLAIN))
    assert same_entity(parse_entity(Format.TEXT_PLAIN, body), GFD229_ENTITY)


def test_gfd229_text_occi_example() -> None:
    lines = transcript(GFD229_TEXT_OCCI)
    assert lines[-1] == "OK"  # the body
    headers = [tuple(line.split(": ", 1)) for line in lines[:-1]]
    entity = parse_entity(Format.TEXT_OCCI, b"OK", headers)
    assert same_entity(entity, GFD229_ENTITY)


def test_gfd229_example_rendered_back() -> None:
    """Our text/plain rendering of the example is the example, bar the
    transcript's folding, its trailing ';' and the ';' it forgot."""
    ours = render_entity(GFD229_ENTITY, Format.TEXT_PLAIN).body.decode().splitlines()
    theirs = [
        line.replace('#" class', '#"; class').removesuffix(";")
        for line in transcript(GFD229_TEXT_PLAIN)
    ]
    assert ours == theirs


def test_gfd229_text_occi_rendering_joins_fields() -> None:
    """GFD.229 §7 recommends one header per field with comma-separated values."""
    rendered = render_entity(GFD229_ENTITY, Format.TEXT_OCCI)
    assert rendered.body == b"OK"
    names = [name for name, _ in rendered.headers]
    assert names == ["Category", "Link", "X-OCCI-Attribute"]
    attributes = dict(rendered.headers)["X-OCCI-Attribute"]
    assert attributes.startswith('occi.core.id="urn:uuid:b9ff813e-fee5-4a9d-b839-673f39746096", ')
    assert "occi.compute.speed=1.33, occi.compute.memory=2.0, occi.compute.cores=2" in attributes


# GFD.226 (JSON Rendering) Appendix A.1, "Resource Instance Example", as
# published: `"location:"/network/…` is a typo that makes it invalid JSON.
GFD226_RESOURCE = """
{
    "kind": "http://schemas.ogf.org/occi/infrastructure#compute",
    "mixins": [
        "http://example.com/occi/infrastructure/os_tpl#debian9",
        "http://example.com/occi/infrastructure/resource_tpl#medium"
    ],
    "attributes": {
        "occi.compute.speed": 2,
        "occi.compute.memory": 4,
        "occi.compute.cores": 2,
        "com.example.occi.templates.myosmixin": {
            "mykey": "myvalue"
        }
    },
    "actions": [
        "http://schemas.ogf.org/occi/infrastructure/compute/action#start"
    ],
    "id": "urn:uuid:996ad860-2a9a-504f-8861-aeafd0b2ae29",
    "links": [
        {
            "kind":"http://schemas.ogf.org/occi/infrastructure#networkinterface",
            "mixins":[
                "http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface"
            ],
            "attributes":{
                "occi.infrastructure.networkinterface.interface":"eth0",
                "occi.infrastructure.networkinterface.mac":"00:80:41:ae:fd:7e",
                "occi.infrastructure.networkinterface.address":"192.168.0.100",
                "occi.infrastructure.networkinterface.gateway":"192.168.0.1",
                "occi.infrastructure.networkinterface.allocation":"dynamic"
            },
            "actions":[
                "http://schemas.ogf.org/occi/infrastructure/networkinterface/action#up",
                "http://schemas.ogf.org/occi/infrastructure/networkinterface/action#down"
            ],
            "id":"urn:uuid:22fe83ae-a20f-54fc-b436-cec85c94c5e8",
            "target": {
                "location:"/network/b7d55bf4-7057-5113-85c8-141871bf7635",
                "kind":"http://schemas.ogf.org/occi/infrastructure#network"
            },
            "source": {
                "location":"/compute/996ad860-2a9a-504f-8861-aeafd0b2ae29",
                "kind":"http://schemas.ogf.org/occi/infrastructure#compute"
            }
        }
    ]
}
"""


def _fix_location_typo(text: str) -> str:
    return text.replace('"location:"/network/', '"location":"/network/')


def test_gfd226_resource_example() -> None:
    with pytest.raises(OcciParseError, match="not JSON"):
        parse_entity(Format.JSON, GFD226_RESOURCE)
    entity = parse_entity(Format.JSON, _fix_location_typo(GFD226_RESOURCE))
    assert entity.kind == INFRA + "compute"
    assert entity.mixins == (
        "http://example.com/occi/infrastructure/os_tpl#debian9",
        "http://example.com/occi/infrastructure/resource_tpl#medium",
    )
    assert typed(entity.attributes) == typed(
        {
            "occi.compute.speed": 2,
            "occi.compute.memory": 4,
            "occi.compute.cores": 2,
            "com.example.occi.templates.myosmixin": {"mykey": "myvalue"},
            "occi.core.id": "urn:uuid:996ad860-2a9a-504f-8861-aeafd0b2ae29",
        }
    )
    assert entity.id == "urn:uuid:996ad860-2a9a-504f-8861-aeafd0b2ae29"
    assert entity.actions == (COMPUTE_ACTION + "start",)
    (link,) = entity.links
    assert link.kind == INFRA + "networkinterface"
    assert link.id == "urn:uuid:22fe83ae-a20f-54fc-b436-cec85c94c5e8"
    assert link.target == "/network/b7d55bf4-7057-5113-85c8-141871bf7635"
    assert link.target_kind == INFRA + "network"
    assert link.source == "/compute/996ad860-2a9a-504f-8861-aeafd0b2ae29"
    assert link.attributes["occi.core.source.kind"] == INFRA + "compute"
    assert link.attributes["occi.infrastructure.networkinterface.mac"] == "00:80:41:ae:fd:7e"
    # and back: JSON gives the same members again
    again = json.loads(render_entity(entity, Format.JSON).body)
    assert again == json.loads(_fix_location_typo(GFD226_RESOURCE))


def test_gfd226_resource_example_in_text() -> None:
    """The JSON example, rendered as text: the object attribute becomes quoted
    JSON, the link a Link field with its target in <…>."""
    entity = parse_entity(Format.JSON, _fix_location_typo(GFD226_RESOURCE))
    body = render_entity(entity, Format.TEXT_PLAIN).body.decode()
    assert (
        "Link: </network/b7d55bf4-7057-5113-85c8-141871bf7635>; "
        'rel="http://schemas.ogf.org/occi/infrastructure#network"; '
        'category="http://schemas.ogf.org/occi/infrastructure#networkinterface '
        'http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface"; '
    ) in body
    assert (
        'X-OCCI-Attribute: com.example.occi.templates.myosmixin="{\\"mykey\\": \\"myvalue\\"}"'
        in body
    )
    back = parse_entity(Format.TEXT_PLAIN, body)
    assert back.attributes["com.example.occi.templates.myosmixin"] == '{"mykey": "myvalue"}'
    assert back.links[0].target_kind == INFRA + "network"


# GFD.226 Appendix A.2, "Action Invocation Example".
GFD226_INVOCATION = """
{
    "action":"http://schemas.ogf.org/occi/infrastructure/compute/action#stop",
    "attributes":{
        "method":"graceful"
    }
}
"""


def test_gfd226_action_invocation_example() -> None:
    invocation = parse_action(Format.JSON, GFD226_INVOCATION)
    assert invocation == ActionInvocation(
        action=COMPUTE_ACTION + "stop", attributes={"method": "graceful"}
    )
    assert check_action(c.COMPUTE_STOP, invocation.attributes) == []
    assert json.loads(render_action(invocation, Format.JSON).body) == json.loads(GFD226_INVOCATION)


# GFD.226 Appendix A.3, "Link Instance Example" (same `"location:` typo).
GFD226_LINK = """
{
    "kind":"http://schemas.ogf.org/occi/infrastructure#networkinterface",
    "mixins":[
        "http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface"
    ],
    "attributes":{
        "occi.infrastructure.networkinterface.interface":"eth0",
        "occi.infrastructure.networkinterface.mac":"00:80:41:ae:fd:7e",
        "occi.infrastructure.networkinterface.address":"192.168.0.100",
        "occi.infrastructure.networkinterface.gateway":"192.168.0.1",
        "occi.infrastructure.networkinterface.allocation":"dynamic"
    },
    "actions":[
        "http://schemas.ogf.org/occi/infrastructure/networkinterface/action#up",
        "http://schemas.ogf.org/occi/infrastructure/networkinterface/action#down"
    ],
    "id":"urn:uuid:22fe83ae-a20f-54fc-b436-cec85c94c5e8",
    "target": {
        "location:"/network/b7d55bf4-7057-5113-85c8-141871bf7635",
        "kind":"http://schemas.ogf.org/occi/infrastructure#network"
    },
    "source": {
        "location":"/compute/996ad860-2a9a-504f-8861-aeafd0b2ae29",
        "kind":"http://schemas.ogf.org/occi/infrastructure#compute"
    }
}
"""


def test_gfd226_link_example() -> None:
    with pytest.raises(OcciParseError):
        parse_entity(Format.JSON, GFD226_LINK)
    link = parse_entity(Format.JSON, _fix_location_typo(GFD226_LINK))
    assert link.kind == INFRA + "networkinterface"
    assert link.source == "/compute/996ad860-2a9a-504f-8861-aeafd0b2ae29"
    assert link.target == "/network/b7d55bf4-7057-5113-85c8-141871bf7635"
    assert len(link.actions) == 2
    # a standalone link in text: source and target are plain attributes
    text = parse_entity(Format.TEXT_PLAIN, render_entity(link, Format.TEXT_PLAIN).body)
    assert same_entity(text, link)


# GFD.226 Appendix A.4, "Kind Instance Example", as published: a comma is
# missing after "description" and "\S+" is not a JSON string escape.
GFD226_KIND = r"""
{
    "term":"compute",
    "scheme":"http://schemas.ogf.org/occi/infrastructure#",
    "title":"ComputeResource",
    "parent":"http://schemas.ogf.org/occi/core#resource",
    "attributes":{
        "occi.compute.hostname":{
            "mutable":true,
            "required":false,
            "type":"string",
            "description":"Hostname of the compute resource"
            "pattern": {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "string",
                "pattern": "\S+"
            }
        },
        "occi.compute.state":{
            "mutable":false,
            "required":false,
            "type":"string",
            "default":"inactive",
            "description":"State the compute resource is in"
        }
    },
    "actions":[
        "http://schemas.ogf.org/occi/infrastructure/compute/action#start",
        "http://schemas.ogf.org/occi/infrastructure/compute/action#stop",
        "http://schemas.ogf.org/occi/infrastructure/compute/action#restart",
        "http://schemas.ogf.org/occi/infrastructure/compute/action#suspend"
    ],
    "location":"/compute/"
}
"""

# GFD.226 Appendix A.5, "Mixin Instance Example".
GFD226_MIXIN = """
{
    "term":"medium",
    "scheme":"http://example.com/template/resource#",
    "depends":[
        "http://schemas.ogf.org/occi/infrastructure#resourcetpl"
    ],
    "applies":[
        "http://schemas.ogf.org/occi/infrastructure#compute"
    ],
    "attributes":{
        "occi.compute.speed":{
            "type":"number",
            "default":2.8
        }
    },
    "title":"MediumVM",
    "location":"/template/resource/medium/"
}
"""

# GFD.226 Appendix A.6, "Action Instance Example".
GFD226_ACTION = """
{
    "term":"stop",
    "scheme":"http://schemas.ogf.org/occi/infrastructure/compute/action#",
    "title":"StopComputeinstance",
    "attributes":{
        "method":{
            "mutable":true,
            "required":false,
            "type":"string",
            "default":"poweroff"
        }
    }
}
"""


def _fix_kind(text: str) -> str:
    return text.replace('resource"\n', 'resource",\n').replace(r'"\S+"', r'"\\S+"')


def test_gfd226_category_examples() -> None:
    with pytest.raises(OcciParseError):
        parse_categories(Format.JSON, f'{{"kinds": [{GFD226_KIND}]}}')
    kinds, mixins, actions = _fix_kind(GFD226_KIND), GFD226_MIXIN, GFD226_ACTION
    body = f'{{"kinds": [{kinds}], "mixins": [{mixins}], "actions": [{actions}]}}'
    kind, mixin, action = parse_categories(Format.JSON, body)
    assert kind == CategoryRef(
        scheme=INFRA,
        term="compute",
        cls="kind",
        title="ComputeResource",
        rel=(CORE + "resource",),
        location="/compute/",
        attributes=(
            AttributeRef("occi.compute.hostname", mutable=True, required=False),
            AttributeRef("occi.compute.state", mutable=False, required=False),
        ),
        actions=tuple(COMPUTE_ACTION + t for t in ("start", "stop", "restart", "suspend")),
    )
    # GFD.226 §3.5.1: mutable defaults to false
    assert mixin.rel == (INFRA + "resourcetpl",)
    assert mixin.attributes == (AttributeRef("occi.compute.speed", mutable=False),)
    assert action.id == COMPUTE_ACTION + "stop"
    assert action.attributes == (AttributeRef("method", mutable=True),)


def test_our_kind_and_action_look_like_gfd226_examples() -> None:
    """The compute kind and stop action we serve have the members and
    attribute descriptions of GFD.226's examples, with our own values."""
    rendered = json.loads(render_categories([c.COMPUTE, c.COMPUTE_STOP], Format.JSON).body)
    (ours,), (stop,) = rendered["kinds"], rendered["actions"]
    theirs = json.loads(_fix_kind(GFD226_KIND))
    assert set(ours) == set(theirs)
    assert {k: ours[k] for k in ("term", "scheme", "parent", "actions", "location")} == {
        k: theirs[k] for k in ("term", "scheme", "parent", "actions", "location")
    }
    state = ours["attributes"]["occi.compute.state"]
    assert (state["mutable"], state["required"], state["type"]) == (False, False, "string")
    assert state["pattern"]["enum"] == ["active", "inactive", "suspended", "error"]
    assert set(ours["attributes"]["occi.compute.hostname"]) >= {"mutable", "required", "type"}
    example = json.loads(GFD226_ACTION)
    assert {k: stop[k] for k in ("term", "scheme")} == {k: example[k] for k in ("term", "scheme")}
    method = stop["attributes"]["method"]
    assert set(method) >= set(example["attributes"]["method"])
    assert method["pattern"]["enum"] == ["graceful", "acpioff", "poweroff"]
    assert method["default"] == "acpioff"


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@given(entity=entities())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_entity_round_trip(fmt: Format, entity: EntityRendering) -> None:
    rendered = render_entity(entity, fmt)
    assert rendered.media_type == fmt.value
    back = parse_entity(fmt, **send(rendered, fmt))
    assert same_entity(back, carried(entity, fmt))


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@given(invocation=invocations)
def test_action_round_trip(fmt: Format, invocation: ActionInvocation) -> None:
    back = parse_action(fmt, **send(render_action(invocation, fmt), fmt))
    assert back.action == invocation.action
    assert typed(back.attributes) == typed(invocation.attributes)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@given(items=st.lists(entities(), max_size=4), link_collection=st.booleans())
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
def test_collection_round_trip(
    fmt: Format, items: list[EntityRendering], link_collection: bool
) -> None:
    back = parse_collection(fmt, **send(render_collection(items, fmt, links=link_collection), fmt))
    if fmt is Format.JSON:
        assert back.locations == ()
        assert len(back.entities) == len(items)
        for got, want in zip(back.entities, items, strict=True):
            assert same_entity(got, carried(want, fmt))
    else:
        assert back.locations == tuple(e.location for e in items)


def _expected_ref(category: c.Category, fmt: Format) -> CategoryRef:
    rel: tuple[str, ...] = ()
    if isinstance(category, Kind) and category.parent is not None:
        rel = (category.parent.id,)
    elif isinstance(category, Mixin):
        rel = tuple(m.id for m in category.depends)
        if fmt is not Format.JSON:
            rel = rel[:1]  # GFD.229 §5.5.2
    return CategoryRef(
        scheme=category.scheme,
        term=category.term,
        cls=category.cls,
        title=category.title or None,
        rel=rel,
        location=getattr(category, "location", None),
        attributes=tuple(AttributeRef(a.name, a.mutable, a.required) for a in category.attributes),
        actions=tuple(a.id for a in getattr(category, "actions", ())),
    )


template_titles = texts.filter(lambda t: t.strip() == t)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@given(
    os_names=st.dictionaries(terms, template_titles, max_size=3),
    sizes=st.dictionaries(
        terms,
        st.tuples(
            st.integers(1, 64),
            st.floats(0.03, 256, allow_nan=False),
            st.floats(0.1, 10, allow_nan=False),
        ),
        max_size=3,
    ),
)
def test_query_interface_round_trip(
    fmt: Format, os_names: dict[str, str], sizes: dict[str, tuple[int, float, float]]
) -> None:
    cats = query_interface(
        [os_template(term, title) for term, title in os_names.items()],
        [
            resource_template(term, term.upper(), cores=n, memory=m, speed=s)
            for term, (n, m, s) in sizes.items()
        ],
    )
    refs = parse_categories(fmt, **send(render_categories(cats, fmt), fmt))
    # JSON groups kinds, mixins and actions; query_interface already lists them so
    assert refs == [_expected_ref(cat, fmt) for cat in cats]


def test_non_ascii_text_survives_the_headers() -> None:
    """Header values travel as latin-1; UTF-8 text rides through as bytes."""
    entity = replace(GFD229_ENTITY, attributes={"occi.core.title": 'Grüße, 世界 "x"\t\\'})
    rendered = render_entity(entity, Format.TEXT_OCCI)
    for _name, value in rendered.headers:
        value.encode("latin-1")  # Starlette can send it as is
    back = parse_entity(Format.TEXT_OCCI, headers=wire(rendered))
    assert back.title == 'Grüße, 世界 "x"\t\\'
    # plain (name, value) pairs with real Unicode work too
    back = parse_entity(Format.TEXT_OCCI, headers=[("Category", rendered.headers[0][1])])
    assert back.kind == INFRA + "compute"


def test_header_sources() -> None:
    """Starlette Headers, a mapping, str pairs and bytes pairs all do; other
    headers are ignored; rOCCI's X-OCCI-Category is read as Category."""
    category = 'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"'
    for headers in (
        Headers({"x-occi-category": category, "host": "example.com"}),
        {"Category": category, "Accept": "text/occi"},
        [("CATEGORY", category), ("User-Agent", "occi-client/1.1 OCCI/1.2")],
        [(b"category", category.encode())],
    ):
        assert parse_entity(Format.TEXT_OCCI, headers=headers).kind == INFRA + "compute"


def test_text_plain_details() -> None:
    """Field names are case-insensitive, blank lines and CRLF are fine, a
    folded line continues the previous field, lists may share a line."""
    body = (
        '\r\ncategory: compute; scheme="http://schemas.ogf.org/occi/infrastructure#";\r\n'
        '  class="kind", small; scheme="http://overcast.invalid/occi/resource_tpl#"; '
        'class=mixin\r\n\r\nx-occi-attribute: a.b=1, c="x, y"; \r\n'
    )
    entity = parse_entity(Format.TEXT_PLAIN, body.encode())
    assert entity.kind == INFRA + "compute"
    assert entity.mixins == ("http://overcast.invalid/occi/resource_tpl#small",)
    assert entity.attributes == {"a.b": 1, "c": "x, y"}


def test_link_without_category_is_a_core_link() -> None:
    body = (
        'Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
        'Link: </storage/1>; rel="http://schemas.ogf.org/occi/infrastructure#storage"; '
        "occi.storagelink.deviceid=block\n"
    )
    (link,) = parse_entity(Format.TEXT_PLAIN, body).links
    assert link.kind == CORE + "link"
    assert link.attributes == {
        "occi.core.target": "/storage/1",
        "occi.core.target.kind": INFRA + "storage",
        "occi.storagelink.deviceid": "block",  # a bare token (GFD.229 link-attribute)
    }


def test_render_refuses_what_text_cannot_carry() -> None:
    """Programming errors, not client errors: our own data must be renderable."""
    bad = [
        replace(GFD229_ENTITY, attributes={"x": "line\nbreak"}),
        replace(GFD229_ENTITY, kind="compute"),
        replace(GFD229_ENTITY, links=(EntityRendering(kind=CORE + "link"),)),
        replace(
            GFD229_ENTITY,
            links=(
                EntityRendering(
                    kind=CORE + "link", attributes={"occi.core.target": "/a", "self": 1}
                ),
            ),
        ),
    ]
    for entity in bad:
        with pytest.raises(ValueError):
            render_entity(entity, Format.TEXT_PLAIN)
    with pytest.raises(ValueError):
        render_collection([replace(GFD229_ENTITY, location=None)], Format.TEXT_PLAIN)


# -- malformed input -----------------------------------------------------------------

KIND_LINE = (
    'Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"\n'
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "no kind"),
        ("Hello: world\n", "expected Category"),
        ("Category compute\n", "expected Category"),
        ("  continued\n", "continuation"),
        ('Category: com pute; scheme="http://x#"; class="kind"\n', "not a term"),
        ('Category: compute; scheme="http://x"; class="kind"\n', "scheme"),
        ('Category: compute; scheme="http://x#"; class="thing"\n', "class"),
        ('Category: compute; scheme="http://x#\n', "not closed"),
        ('Category: compute; scheme="http://x#" ; ; class="kind"\n', "parameter name"),
        ('Category: compute; scheme="http://x#"; scheme="http://y#"; class="kind"\n', "twice"),
        ('Category: compute; scheme="http://x#"; class="kind" junk\n', "expected ';'"),
        (KIND_LINE * 2, "two"),
        (KIND_LINE.replace('"kind"', '"action"'), "kinds or mixins"),
        (KIND_LINE + "X-OCCI-Attribute: a=1\nX-OCCI-Attribute: a=2\n", "twice"),
        (KIND_LINE + "X-OCCI-Attribute: a=unquoted\n", "not a quoted string"),
        (KIND_LINE + "X-OCCI-Attribute: a=1e999\n", "not a quoted string"),
        (KIND_LINE + "X-OCCI-Attribute: a=1 2\n", "unexpected"),
        (KIND_LINE + "X-OCCI-Attribute: =1\n", "name"),
        (KIND_LINE + "X-OCCI-Attribute: a\n", "'='"),
        (KIND_LINE + "X-OCCI-Location: http://x/y\n", "does not belong"),
        (KIND_LINE + 'Link: /storage/1; rel="http://x#y"\n', "<URI>"),
        (KIND_LINE + "Link: </storage/1>\n", "rel is missing"),
        (KIND_LINE + 'Link: </storage/1>; rel="storage"\n', "type identifier"),
        (KIND_LINE + 'Link: </sto rage/1>; rel="http://x#y"; category="http://x#l"\n', "URI"),
        (KIND_LINE + 'X-OCCI-Attribute: a="\x01"\n', "control"),
        (b"\xff\xfe".decode("latin-1"), "expected Category"),
    ],
)
def test_malformed_text(body: str, message: str) -> None:
    with pytest.raises(OcciParseError, match=re.escape(message)):
        parse_entity(Format.TEXT_PLAIN, body)


def test_malformed_other_renderings() -> None:
    cases: list[tuple[Any, str]] = [
        (lambda: parse_entity(Format.TEXT_PLAIN, b"\xff"), "UTF-8"),
        (lambda: parse_entity(Format.JSON, b"\xff"), "UTF-8"),
        (lambda: parse_entity(Format.JSON, "[]"), "object"),
        (lambda: parse_entity(Format.JSON, "{}"), "kind is missing"),
        (lambda: parse_entity(Format.JSON, '{"kind": "x"}'), "type identifier"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "kind": "a:b#c"}'), "twice"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "colour": 1}'), "unknown member"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "attributes": {"x": null}}'), "null"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "attributes": {"x": NaN}}'), "NaN"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "attributes": {"x": 1e999}}'), "inf"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "attributes": {"x y": 1}}'), "name"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "attributes": []}'), "object"),
        (lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "title": "\\u0000"}'), "control"),
        (
            lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "attributes": {"x": "\\ud800"}}'),
            "control",
        ),
        (
            lambda: parse_entity(
                Format.JSON, '{"kind": "a:b#c", "id": "1", "attributes": {"occi.core.id": "2"}}'
            ),
            "disagrees",
        ),
        (
            lambda: parse_entity(Format.JSON, '{"kind": "a:b#c", "links": [{"kind": "a:b#l"}]}'),
            "target",
        ),
        (
            lambda: parse_entity(
                Format.JSON,
                '{"kind": "a:b#c", "links": [{"kind": "a:b#l", "target": {"location": "/x"}, '
                '"attributes": {"self": 1}}]}',
            ),
            "attribute name",
        ),
        (lambda: parse_entity(Format.JSON, "[" * 100_000), "not JSON"),
        (lambda: parse_action(Format.JSON, '{"attributes": {}}'), "action is missing"),
        (lambda: parse_action(Format.TEXT_PLAIN, ""), "no action"),
        (
            lambda: parse_action(Format.TEXT_OCCI, headers={"Category": KIND_LINE[10:]}),
            'class="action"',
        ),
        (lambda: parse_action(Format.TEXT_PLAIN, 'Link: </x>; rel="a:b#c"'), "does not belong"),
        (lambda: parse_categories(Format.JSON, '{"kinds": {}}'), "array"),
        (lambda: parse_categories(Format.JSON, '{"kinds": [{"term": "x"}]}'), "scheme"),
        (
            lambda: parse_categories(
                Format.JSON,
                '{"mixins": [{"term": "x", "scheme": "a:b#", '
                '"attributes": {"y": {"mutable": 1}}}]}',
            ),
            "booleans",
        ),
        (lambda: parse_categories(Format.TEXT_PLAIN, "X-OCCI-Attribute: a=1"), "does not belong"),
        (
            lambda: parse_categories(
                Format.TEXT_PLAIN, 'Category: x; scheme="a:b#"; attributes="a{big}"'
            ),
            "properties",
        ),
        (lambda: parse_collection(Format.TEXT_PLAIN, KIND_LINE), "does not belong"),
        (lambda: parse_collection(Format.TEXT_PLAIN, "X-OCCI-Location: <x>"), "URI"),
        (lambda: parse_collection(Format.JSON, '{"resources": 1}'), "array"),
    ]
    for call, message in cases:
        with pytest.raises(OcciParseError, match=re.escape(message)):
            call()


def test_parse_error_is_a_usage_error() -> None:
    """So the API's one error table answers it with 400 ``usage``."""
    assert issubclass(OcciParseError, UsageError)
    assert issubclass(OcciParseError, ValueError)


PARSERS = [parse_entity, parse_action, parse_categories, parse_collection]
# characters that matter to the grammars, so generated text gets past the first check
SYNTAX = st.text(
    st.sampled_from(
        list('Category:Link X-OCCI-Attribute Location;=",<>\\{}#./?_-\t\n\r0123456789aeE')
    ),
    max_size=120,
)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@given(text=st.text(max_size=200) | SYNTAX, raw=st.binary(max_size=64))
@settings(max_examples=300)
def test_arbitrary_input_only_raises_parse_errors(fmt: Format, text: str, raw: bytes) -> None:
    headers = [(name, text) for name in ("Category", "Link", "X-OCCI-Attribute", "X-OCCI-Location")]
    for parse in PARSERS:
        for body, hdrs in ((text, ()), (raw, ()), (b"", headers[:1]), (b"", headers)):
            with contextlib.suppress(OcciParseError):
                parse(fmt, body, hdrs)


def _renders_everywhere(entity: EntityRendering, source: Format) -> None:
    """Whatever a parser accepted, every renderer can write out; the source
    rendering reads its own output back unchanged, and every other one is
    stable after one trip."""
    for fmt in ALL_FORMATS:
        once = parse_entity(fmt, **send(render_entity(entity, fmt), fmt))
        if fmt is source:
            assert same_entity(once, carried(entity, fmt))
        twice = parse_entity(fmt, **send(render_entity(once, fmt), fmt))
        assert same_entity(twice, once)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid text rendering with a few characters changed."""
    text = render_entity(draw(entities()), Format.TEXT_PLAIN).body.decode()
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.sampled_from(['"', ";", ",", "<", ">", "=", " ", "\n", "\\", "", "a", "1"]))
            + text[at + draw(st.integers(0, 2)) :]
        )
    return text


@given(text=mutated())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        entity = parse_entity(Format.TEXT_PLAIN, text)
    except OcciParseError:
        return
    _renders_everywhere(entity, Format.TEXT_PLAIN)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
junk = st.one_of(json_values, type_ids, uris, names)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid seven times in eight, so generated documents get past the first
    checks and reach the deeper ones."""
    return st.integers(0, 7).flatmap(lambda i: junk if i == 7 else good)


json_attributes = st.dictionaries(
    mostly(names).filter(lambda k: isinstance(k, str)) | texts,
    mostly(scalars | json_values),
    max_size=3,
)
json_links = st.fixed_dictionaries(
    {
        "kind": mostly(type_ids),
        "target": st.fixed_dictionaries(
            {"location": mostly(uris)}, optional={"kind": mostly(type_ids)}
        ),
    },
    optional={
        "attributes": json_attributes,
        "source": st.fixed_dictionaries({"location": mostly(uris)}),
        "mixins": st.lists(mostly(type_ids), max_size=2),
        "actions": st.lists(mostly(type_ids), max_size=2),
        "id": mostly(texts),
        "rel": mostly(type_ids),
    },
)
json_entities = st.fixed_dictionaries(
    {"kind": mostly(type_ids)},
    optional={
        "mixins": mostly(st.lists(mostly(type_ids), max_size=2)),
        "attributes": mostly(json_attributes),
        "actions": mostly(st.lists(type_ids, max_size=2)),
        "id": mostly(texts),
        "title": mostly(texts),
        "summary": texts,
        "links": mostly(st.lists(json_links, max_size=2)),
        "source": st.fixed_dictionaries({"location": mostly(uris), "kind": mostly(type_ids)}),
    },
)


@given(document=json_entities)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_generated_json_parses_or_fails_cleanly(document: dict[str, object]) -> None:
    try:
        body = json.dumps(document)
    except ValueError:
        return
    try:
        entity = parse_entity(Format.JSON, body)
    except OcciParseError:
        return
    _renders_everywhere(entity, Format.JSON)


def _slots(node: object) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON document, to put junk into."""
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return []
    return [(node, k) for k, _ in items] + [s for _, v in items for s in _slots(v)]


@st.composite
def broken_json(draw: st.DrawFn, document: object) -> str:
    """A valid JSON rendering with a few members replaced by junk."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        container, key = draw(st.sampled_from(_slots(document)))
        container[key] = draw(junk)
    return json.dumps(document)


QUERY_INTERFACE_JSON = json.loads(
    render_categories(query_interface([os_template("u", "U")]), Format.JSON).body
)
RESOURCE_JSON = json.loads(_fix_location_typo(GFD226_RESOURCE))


@given(body=broken_json(QUERY_INTERFACE_JSON))
@settings(max_examples=200)
def test_broken_json_categories_parse_or_fail_cleanly(body: str) -> None:
    with contextlib.suppress(OcciParseError):
        parse_categories(Format.JSON, body)


@given(body=broken_json(RESOURCE_JSON))
@settings(max_examples=200)
def test_broken_json_entity_parses_or_fails_cleanly(body: str) -> None:
    try:
        entity = parse_entity(Format.JSON, body)
    except OcciParseError:
        return
    _renders_everywhere(entity, Format.JSON)


# -- the query interface ----------------------------------------------------------


def test_query_interface_has_every_standard_category() -> None:
    """GFD.221 kinds, GFD.224 kinds, mixins and actions with their schemes."""
    ids = [cat.id for cat in query_interface()]
    assert len(ids) == len(set(ids))
    expected = [
        CORE + "entity",
        CORE + "resource",
        CORE + "link",
        INFRA + "compute",
        INFRA + "storage",
        INFRA + "storagelink",
        INFRA + "network",
        INFRA + "networkinterface",
        "http://schemas.ogf.org/occi/infrastructure/network#ipnetwork",
        "http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface",
        INFRA + "os_tpl",
        INFRA + "resource_tpl",
        *(COMPUTE_ACTION + t for t in ("start", "stop", "restart", "suspend")),
        *(STORAGE_ACTION + t for t in ("online", "offline", "backup", "snapshot", "resize")),
        NETWORK_ACTION + "up",
        NETWORK_ACTION + "down",
    ]
    assert ids == expected
    registry = Registry(query_interface())
    classes = {cat.id: cat.cls for cat in registry.categories}
    assert [i for i in expected if classes[i] == "kind"] == expected[:8]
    assert [i for i in expected if classes[i] == "mixin"] == expected[8:12]


def test_kinds_relate_as_gfd224_says() -> None:
    registry = Registry(query_interface())
    parents = {k.term: k.parent.id if k.parent else None for k in registry.kinds}
    assert parents == {
        "entity": None,
        "resource": CORE + "entity",
        "link": CORE + "entity",
        "compute": CORE + "resource",
        "storage": CORE + "resource",
        "network": CORE + "resource",
        "storagelink": CORE + "link",
        "networkinterface": CORE + "link",
    }
    # GFD.223 §4: the entity kind cannot be instantiated, so it has no location
    locations = {k.term: k.location for k in registry.kinds}
    assert locations["entity"] is None
    for term in ("compute", "storage", "network", "storagelink", "networkinterface"):
        assert locations[term] == f"/{term}/"
        assert registry.at(f"/{term}/") is registry.kind(INFRA + term)
    assert [a.term for a in c.COMPUTE.actions] == ["start", "stop", "restart", "suspend"]
    assert [a.term for a in c.NETWORK.actions] == ["up", "down"]
    assert c.IPNETWORK.applies == (c.NETWORK,)
    assert c.IPNETWORKINTERFACE.applies == (c.NETWORKINTERFACE,)
    methods = {a.term: a.attributes[0].values for a in c.COMPUTE.actions if a.attributes}
    assert methods == {  # GFD.224 §3.1, the table of compute actions
        "stop": ("graceful", "acpioff", "poweroff"),
        "restart": ("graceful", "warm", "cold"),
        "suspend": ("hibernate", "suspend"),
    }
    names = set(c.attribute_definitions(c.COMPUTE))
    assert {"occi.core.id", "occi.core.title", "occi.core.summary", "occi.compute.state"} <= names


def test_templates() -> None:
    ubuntu = os_template(slug("Ubuntu 22.04 LTS") or "x", "Ubuntu 22.04 LTS")
    small = resource_template("small", "Small", cores=1, memory=0.5, speed=1.0)
    assert ubuntu.id == c.OS_TPL_SCHEME + "ubuntu-22.04-lts"
    assert ubuntu.location == "/os_tpl/ubuntu-22.04-lts/"
    assert ubuntu.depends == (c.OS_TPL,)
    assert small.depends == (c.RESOURCE_TPL,)
    assert slug("!!!") is None
    assert slug("--Debian_12.x--") == "debian_12.x"
    registry = Registry(query_interface([ubuntu], [small]))
    assert registry.mixin(ubuntu.id) is ubuntu
    assert registry.at("/resource_tpl/small/") is small
    assert registry.kind(ubuntu.id) is None
    assert registry.action(COMPUTE_ACTION + "stop") is c.COMPUTE_STOP
    assert registry.get("http://nowhere#x") is None
    with pytest.raises(ValueError, match="twice"):
        Registry([*query_interface([ubuntu]), ubuntu])
    with pytest.raises(ValueError, match="location"):
        Registry(query_interface([ubuntu, os_template("other", "x", location=ubuntu.location)]))
    with pytest.raises(ValueError, match="term"):
        os_template("no spaces", "x")


def test_filter_categories() -> None:
    """GFD.223 §7.1: only the categories related to the filter."""
    ubuntu = os_template("ubuntu", "Ubuntu")
    small = resource_template("small", "Small", cores=1, memory=0.5, speed=1.0)
    cats = query_interface([ubuntu], [small])

    def ids(*requested: str) -> list[str]:
        return [cat.id for cat in filter_categories(cats, requested)]

    assert ids() == [cat.id for cat in cats]
    assert ids(INFRA + "os_tpl") == [INFRA + "os_tpl", ubuntu.id]
    assert ids(INFRA + "compute") == [
        INFRA + "compute",
        INFRA + "os_tpl",
        INFRA + "resource_tpl",
        ubuntu.id,
        small.id,
        *(COMPUTE_ACTION + t for t in ("start", "stop", "restart", "suspend")),
    ]
    assert ids(CORE + "link") == [CORE + "link", INFRA + "storagelink", INFRA + "networkinterface"]
    assert ids(NETWORK_ACTION + "up") == [NETWORK_ACTION + "up"]
    assert ids("http://nowhere#x") == []
    # as the routes would use it: a Category header, any rendering
    headers = {"Category": 'os_tpl; scheme="http://schemas.ogf.org/occi/infrastructure#"'}
    refs = parse_categories(Format.TEXT_OCCI, headers=headers)
    assert refs[0].cls is None
    assert [cat.id for cat in Registry(cats).filter(r.id for r in refs)] == ids(INFRA + "os_tpl")


# -- attribute checks ------------------------------------------------------------


def test_attribute_types() -> None:
    cores = c.attribute_definitions(c.COMPUTE)["occi.compute.cores"]
    assert cores.problem(2) is None
    assert cores.problem(2.0) is None  # a whole number, however written
    assert cores.problem(2.5) == "expected a whole number"
    assert cores.problem(0) == "must be at least 1"
    assert cores.problem(True) == "expected a number, got a boolean"
    assert cores.problem("2") == "expected a number, got a string"
    vlan = c.attribute_definitions(c.NETWORK)["occi.network.vlan"]
    assert vlan.problem(4096) == "must be at most 4095"
    arch = c.attribute_definitions(c.COMPUTE)["occi.compute.architecture"]
    assert arch.problem("arm") == "must be one of x86, x64"
    mac = c.attribute_definitions(c.NETWORKINTERFACE)["occi.networkinterface.mac"]
    assert mac.problem("00:80:41:ae:fd:7e") is None
    assert mac.problem("00:80:41:ae:fd") is not None
    flag = Attribute(name="x.flag", type="boolean")
    assert flag.problem(False) is None
    assert flag.problem(0) == "expected a boolean, got a number"
    blob = Attribute(name="x.blob", type="object")
    assert blob.problem({"a": 1}) is None
    assert blob.problem('{"a": 1}') is None  # as the text renderings carry it
    assert blob.problem("[1]") == "expected an object, got a string"
    assert Attribute(name="x.list", type="array").problem([1]) is None
    assert (
        Attribute(name="x.speed", type="number").problem(float("inf")) == "must be a finite number"
    )
    with pytest.raises(ValueError):
        Attribute(name="x.bad", type="integer", default="one")
    with pytest.raises(ValueError):
        Attribute(name="x.enum", type="enum")
    with pytest.raises(ValueError):
        Attribute(name="bad name")


def test_check_attributes_on_create() -> None:
    # a compute with no attributes at all: defaults apply
    assert check_attributes(c.COMPUTE, [], {}, creating=True) == []
    assert defaults(c.COMPUTE) == {
        "occi.compute.architecture": "x64",
        "occi.compute.cores": c.DEFAULT_CORES,
        "occi.compute.speed": c.DEFAULT_SPEED_GHZ,
        "occi.compute.memory": c.DEFAULT_MEMORY_GIB,
    }
    big = resource_template("big", "Big", cores=8, memory=16.0, speed=3.0)
    assert defaults(c.COMPUTE, [big])["occi.compute.cores"] == 8  # the mixin's default wins
    assert check_attributes(c.STORAGE, [], {}, creating=True) == [
        Problem("occi.storage.size", "is required")
    ]
    problems = check_attributes(
        c.COMPUTE,
        [],
        {"occi.compute.cores": "two", "occi.compute.colour": "red", "occi.compute.state": "active"},
        creating=True,
    )
    assert [str(p) for p in problems] == [
        "occi.compute.cores: expected a number, got a string",
        f"occi.compute.colour: not an attribute of {INFRA}compute",
    ]  # immutable ones may be given at creation (GFD.226: mutable after initialization)
    nic = {"occi.networkinterface.address": "10.0.0.2"}
    assert check_attributes(c.NETWORKINTERFACE, [], nic, creating=False)[0].name == (
        "occi.networkinterface.address"
    )
    link = {"occi.core.source": "/compute/1", "occi.core.target": "/network/2", **nic}
    assert check_attributes(c.NETWORKINTERFACE, [c.IPNETWORKINTERFACE], link, creating=True) == []


def test_check_attributes_on_update_accepts_what_was_read() -> None:
    """PUT with the whole rendering a client just read must pass (issue 6),
    so immutable attributes equal to the current values are no problem."""
    current = {
        "occi.core.id": "urn:uuid:1",
        "occi.compute.state": "active",
        "occi.compute.cores": 2,
        "occi.compute.memory": 1.0,
    }
    read_back = dict(current, **{"occi.compute.memory": 1, "occi.compute.cores": 4})
    assert check_attributes(c.COMPUTE, [], read_back, creating=False, current=current) == []
    changed = dict(current, **{"occi.compute.state": "inactive"})
    assert check_attributes(c.COMPUTE, [], changed, creating=False, current=current) == [
        Problem("occi.compute.state", "cannot be changed")
    ]
    assert check_attributes(c.COMPUTE, [], current, creating=False) == [
        Problem("occi.core.id", "cannot be changed"),
        Problem("occi.compute.state", "cannot be changed"),
    ]
    # True is not 1
    flag = Kind(
        scheme="http://x.example/k#",
        term="k",
        attributes=(Attribute(name="f", type="boolean", mutable=False),),
    )
    assert check_attributes(flag, [], {"f": True}, creating=False, current={"f": True}) == []


def test_check_mixins_and_actions() -> None:
    assert check_mixins(c.COMPUTE, [c.IPNETWORK]) == [
        Problem(c.IPNETWORK.id, f"does not apply to {INFRA}compute")
    ]
    assert check_mixins(c.COMPUTE, [os_template("u", "U")]) == []
    assert check_action(c.COMPUTE_STOP, {}) == []
    assert [str(p) for p in check_action(c.COMPUTE_STOP, {"method": "yank", "force": True})] == [
        "method: must be one of graceful, acpioff, poweroff",
        f"force: not a parameter of {COMPUTE_ACTION}stop",
    ]
    assert check_action(c.STORAGE_RESIZE, {}) == [Problem("size", "is required")]


def test_split_id() -> None:
    assert split_id(INFRA + "compute") == (INFRA, "compute")
    assert split_id("compute") is None
    assert split_id("http://x/#a#b") is None
    assert split_id("http://x y/#a") is None
    assert ATTRIBUTE_NAME.fullmatch("occi.compute.state.message")


# -- negotiation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, (Format.TEXT_PLAIN, "text/plain")),
        ("", (Format.TEXT_PLAIN, "text/plain")),
        ("*/*", (Format.TEXT_PLAIN, "text/plain")),
        ("text/occi", (Format.TEXT_OCCI, "text/occi")),
        ("application/json", (Format.JSON, "application/json")),
        ("Application/OCCI+JSON; charset=utf-8", (Format.JSON, "application/occi+json")),
        ("text/html, application/json;q=0.5, text/occi;q=0.9", (Format.TEXT_OCCI, "text/occi")),
        ("text/*;q=0.5, application/occi+json", (Format.JSON, "application/occi+json")),
        ("application/*", (Format.JSON, "application/occi+json")),
        ("text/plain;q=0, */*", (Format.TEXT_PLAIN, "text/occi+plain")),
        ("text/html", None),
        ("text/plain;q=0", None),
        ("text/plain;q=abc", None),
    ],
)
def test_negotiate(accept: str | None, expected: tuple[Format, str] | None) -> None:
    assert negotiate(accept) == expected


def test_format_of() -> None:
    assert format_of("text/plain; charset=utf-8") is Format.TEXT_PLAIN
    assert format_of("text/occi") is Format.TEXT_OCCI
    assert format_of("application/json") is Format.JSON
    assert format_of("application/x-www-form-urlencoded") is None
    assert format_of(None) is None
