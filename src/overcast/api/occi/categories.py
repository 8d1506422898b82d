"""OCCI's type system as overcast serves it, and the checks against it.

Owns the kinds, mixins and actions a client discovers through the query
interface (OCCI Core GFD.221 and Infrastructure GFD.224), the templates
supplied at runtime (an ``os_tpl`` per library drive, ``resource_tpl`` sizes),
the Category filter of GFD.223, and the checks of client-supplied attribute
values against the definitions. It does not own renderings (``render``),
HTTP, or what an attribute means for a server or a drive: the routes map
those onto the cloud.

Where GFD.224 leaves a choice to the provider, this module makes it:

- ``occi.core.id`` and every ``*.state`` / ``*.state.message`` are immutable and
  not required: the server assigns them ("multiplicity 1" means the server
  always shows one, not that a client must send one).
- a link's ``occi.core.source`` and ``occi.core.target`` are immutable: a
  hot-plugged device is detached and attached again, never re-pointed.
- the ``method`` defaults of the compute actions say what overcast does:
  ``stop`` is the ACPI power button, ``restart`` a hard reset, ``suspend`` a
  pause. Which other methods a route honours is the route's decision.
- ``save`` (compute) and the storagelink/networkinterface actions are not
  offered; ``backup``, ``snapshot`` and ``resize`` (storage, from OCCI 1.1)
  are, so that a route can answer them with a clear error rather than
  "unknown action".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

__all__ = [
    "ACTIONS",
    "ATTRIBUTE_NAME",
    "COMPUTE",
    "COMPUTE_RESTART",
    "COMPUTE_START",
    "COMPUTE_STOP",
    "COMPUTE_SUSPEND",
    "CORE",
    "DEFAULT_CORES",
    "DEFAULT_MEMORY_GIB",
    "DEFAULT_SPEED_GHZ",
    "ENTITY",
    "INFRASTRUCTURE",
    "IPNETWORK",
    "IPNETWORKINTERFACE",
    "KINDS",
    "LINK",
    "MIXINS",
    "NETWORK",
    "NETWORKINTERFACE",
    "NETWORK_DOWN",
    "NETWORK_UP",
    "OS_TPL",
    "OS_TPL_SCHEME",
    "RESOURCE",
    "RESOURCE_TPL",
    "RESOURCE_TPL_SCHEME",
    "STORAGE",
    "STORAGELINK",
    "STORAGE_BACKUP",
    "STORAGE_OFFLINE",
    "STORAGE_ONLINE",
    "STORAGE_RESIZE",
    "STORAGE_SNAPSHOT",
    "TERM",
    "Action",
    "Attribute",
    "AttributeType",
    "AttributeValue",
    "Category",
    "JsonValue",
    "Kind",
    "Mixin",
    "Problem",
    "Registry",
    "attribute_definitions",
    "check_action",
    "check_attributes",
    "check_mixins",
    "defaults",
    "filter_categories",
    "is_a",
    "os_template",
    "query_interface",
    "resource_template",
    "slug",
    "split_id",
]

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
#: A typed attribute value: what the text rendering shows bare (numbers,
#: booleans) or quoted (strings), plus JSON's arrays and objects.
AttributeValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue]"
#: ``integer`` and ``enum`` refine JSON's ``number`` and ``string`` (GFD.224
#: has Integer and Enum attributes); the JSON rendering shows them as such
#: with a JSON-schema ``pattern``.
AttributeType = Literal["string", "number", "integer", "boolean", "enum", "object", "array"]

#: GFD.229: ``term = ( ALPHA | DIGIT ) *( ALPHA | DIGIT | "-" | "_" | "." )``;
#: attribute names follow the same rule.
TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ATTRIBUTE_NAME = TERM
#: A scheme is a URI ending in ``#`` so that ``scheme + term`` splits back
#: unambiguously at the last ``#``.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\"<>#\\]*#")

CORE = "http://schemas.ogf.org/occi/core#"
INFRASTRUCTURE = "http://schemas.ogf.org/occi/infrastructure#"
_INFRA = "http://schemas.ogf.org/occi/infrastructure/"
#: Provider schemes must not use the ``schemas.ogf.org/occi/`` base
#: (GFD.221 §Category) nor the request's host (a template's identity must not
#: change with the name a client used); ``.invalid`` (RFC 6761) is nobody's.
OS_TPL_SCHEME = "http://overcast.invalid/occi/os_tpl#"
RESOURCE_TPL_SCHEME = "http://overcast.invalid/occi/resource_tpl#"

#: What a compute created with no attributes gets (GFD.221 §Templates:
#: defaults are discoverable through ``Attribute.default``).
DEFAULT_CORES = 1
DEFAULT_MEMORY_GIB = 0.5
DEFAULT_SPEED_GHZ = 2.0


def split_id(type_id: str) -> tuple[str, str] | None:
    """``scheme#term`` → ``(scheme#, term)``, or None if it is not one."""
    scheme, sep, term = type_id.rpartition("#")
    scheme += sep
    if _SCHEME.fullmatch(scheme) and TERM.fullmatch(term):
        return scheme, term
    return None


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _decodes_to(value: object, kind: type) -> bool:
    """Objects and arrays travel as quoted JSON in the text renderings."""
    if isinstance(value, kind):
        return True
    if not isinstance(value, str):
        return False
    try:
        return isinstance(json.loads(value), kind)
    except (ValueError, RecursionError):
        return False


@dataclass(frozen=True, kw_only=True)
class Attribute:
    """One attribute definition (GFD.221 §Attribute).

    ``pattern`` is a regular expression a string must match whole; ``values``
    are an enum's choices; ``minimum``/``maximum`` bound numbers (inclusive).
    """

    name: str
    type: AttributeType = "string"
    mutable: bool = True
    required: bool = False
    default: AttributeValue | None = None
    description: str = ""
    pattern: str | None = None
    values: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if not ATTRIBUTE_NAME.fullmatch(self.name):
            raise ValueError(f"bad attribute name {self.name!r}")
        if (self.type == "enum") != bool(self.values):
            raise ValueError(f"{self.name}: enum values go with type enum only")
        if self.default is not None and (why := self.problem(self.default)):
            raise ValueError(f"{self.name}: default {self.default!r} {why}")

    def problem(self, value: object) -> str | None:
        """Why ``value`` cannot be this attribute's value, or None if it can."""
        if self.type in ("string", "enum"):
            if not isinstance(value, str):
                return f"expected a string, got a {_type_name(value)}"
            if self.values and value not in self.values:
                return "must be one of " + ", ".join(self.values)
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                return f"must match {self.pattern}"
            return None
        if self.type == "boolean":
            if isinstance(value, bool):
                return None
            return f"expected a boolean, got a {_type_name(value)}"
        if self.type in ("number", "integer"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"expected a number, got a {_type_name(value)}"
            if isinstance(value, float) and not math.isfinite(value):
                return "must be a finite number"
            if self.type == "integer" and isinstance(value, float) and not value.is_integer():
                return "expected a whole number"
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum:g}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum:g}"
            return None
        wanted = dict if self.type == "object" else list
        if not _decodes_to(value, wanted):
            return f"expected an {self.type}, got a {_type_name(value)}"
        return None


@dataclass(frozen=True, kw_only=True)
class Category:
    """What kinds, mixins and actions share: identity and attributes."""

    cls: ClassVar[Literal["kind", "mixin", "action"]]

    scheme: str
    term: str
    title: str = ""
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        if not _SCHEME.fullmatch(self.scheme):
            raise ValueError(f"bad scheme {self.scheme!r}")
        if not TERM.fullmatch(self.term):
            raise ValueError(f"bad term {self.term!r}")
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.id}: an attribute is defined twice")

    @property
    def id(self) -> str:
        """The type identifier, ``scheme + term`` (GFD.221 §Category)."""
        return self.scheme + self.term


def _check_location(owner: str, location: str | None) -> None:
    """Category locations are paths with a trailing slash (GFD.223 §Namespace)."""
    if location is not None and not re.fullmatch(r"/(?:[A-Za-z0-9._~-]+/)+", location):
        raise ValueError(f"{owner}: bad location {location!r}")


@dataclass(frozen=True, kw_only=True)
class Action(Category):
    """An invocable operation; its attributes are the operation's parameters."""

    cls: ClassVar[Literal["kind", "mixin", "action"]] = "action"


@dataclass(frozen=True, kw_only=True)
class Kind(Category):
    """The type of an entity; ``location`` is its collection's path."""

    cls: ClassVar[Literal["kind", "mixin", "action"]] = "kind"

    actions: tuple[Action, ...] = ()
    parent: Kind | None = field(default=None, repr=False)
    location: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_location(self.id, self.location)


@dataclass(frozen=True, kw_only=True)
class Mixin(Category):
    """An extension or a template; ``depends`` and ``applies`` relate it."""

    cls: ClassVar[Literal["kind", "mixin", "action"]] = "mixin"

    actions: tuple[Action, ...] = ()
    depends: tuple[Mixin, ...] = field(default=(), repr=False)
    applies: tuple[Kind, ...] = field(default=(), repr=False)
    location: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_location(self.id, self.location)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a client's attributes; ``str()`` is the message."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def _kind_chain(kind: Kind) -> list[Kind]:
    chain = [kind]
    while chain[-1].parent is not None:
        chain.append(chain[-1].parent)
    return chain


def is_a(kind: Kind, type_id: str) -> bool:
    """Whether ``kind`` is ``type_id`` or inherits from it."""
    return any(k.id == type_id for k in _kind_chain(kind))


def _mixin_closure(mixins: Iterable[Mixin]) -> list[Mixin]:
    """Mixins and what they depend on, dependencies first (GFD.221: a mixin
    gives the capabilities of those it depends on too)."""
    seen: dict[str, Mixin] = {}

    def visit(mixin: Mixin) -> None:
        if mixin.id in seen:
            return
        for dep in mixin.depends:
            visit(dep)
        seen[mixin.id] = mixin

    for m in mixins:
        visit(m)
    return list(seen.values())


def attribute_definitions(kind: Kind, mixins: Iterable[Mixin] = ()) -> dict[str, Attribute]:
    """Every attribute an entity of ``kind`` with ``mixins`` has.

    Later definitions win: a child kind's over its parent's, a mixin's over
    the kind's, because GFD.221 §Templates lets a mixin's default override
    the kind's.
    """
    out: dict[str, Attribute] = {}
    for category in [*reversed(_kind_chain(kind)), *_mixin_closure(mixins)]:
        for attribute in category.attributes:
            out[attribute.name] = attribute
    return out


def defaults(kind: Kind, mixins: Iterable[Mixin] = ()) -> dict[str, AttributeValue]:
    """The values a new entity gets for the attributes a client left out."""
    return {
        name: a.default
        for name, a in attribute_definitions(kind, mixins).items()
        if a.default is not None
    }


def _same(a: object, b: object) -> bool:
    """Equal as attribute values: ``2 == 2.0`` but ``True != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def check_attributes(
    kind: Kind,
    mixins: Iterable[Mixin],
    attributes: Mapping[str, AttributeValue],
    *,
    creating: bool,
    current: Mapping[str, AttributeValue] | None = None,
) -> list[Problem]:
    """Everything wrong with a client's attributes for this kind and mixins.

    Unknown names and wrong types are always problems. ``creating``: a
    required attribute without a default must be present, and immutable ones
    may be given (GFD.226: "mutable after initialization"). Otherwise (PUT,
    POST update) an immutable attribute is a problem *unless* it equals its
    value in ``current``, so that a client may send back the whole rendering
    it just read.
    """
    mixins = list(mixins)
    known = attribute_definitions(kind, mixins)
    problems: list[Problem] = []
    for name, value in attributes.items():
        definition = known.get(name)
        if definition is None:
            problems.append(Problem(name, f"not an attribute of {kind.id}"))
        elif why := definition.problem(value):
            problems.append(Problem(name, why))
        elif (
            not creating
            and not definition.mutable
            and (current is None or name not in current or not _same(current[name], value))
        ):
            problems.append(Problem(name, "cannot be changed"))
    if creating:
        for name, definition in known.items():
            if definition.required and definition.default is None and name not in attributes:
                problems.append(Problem(name, "is required"))
    return problems


def check_mixins(kind: Kind, mixins: Iterable[Mixin]) -> list[Problem]:
    """Mixins whose ``applies`` excludes this kind (GFD.221 §Mixin)."""
    return [
        Problem(m.id, f"does not apply to {kind.id}")
        for m in mixins
        if m.applies and not any(is_a(kind, k.id) for k in m.applies)
    ]


def check_action(action: Action, attributes: Mapping[str, AttributeValue]) -> list[Problem]:
    """Everything wrong with an action invocation's parameters."""
    known = {a.name: a for a in action.attributes}
    problems: list[Problem] = []
    for name, value in attributes.items():
        definition = known.get(name)
        if definition is None:
            problems.append(Problem(name, f"not a parameter of {action.id}"))
        elif why := definition.problem(value):
            problems.append(Problem(name, why))
    for name, definition in known.items():
        if definition.required and definition.default is None and name not in attributes:
            problems.append(Problem(name, "is required"))
    return problems


# -- the standard categories -------------------------------------------------


def _state(prefix: str, values: tuple[str, ...]) -> tuple[Attribute, Attribute]:
    return (
        Attribute(
            name=f"{prefix}.state",
            type="enum",
            values=values,
            mutable=False,
            description="Current state of the instance",
        ),
        Attribute(
            name=f"{prefix}.state.message",
            mutable=False,
            description="Human-readable explanation of the current state",
        ),
    )


def _method(values: tuple[str, ...], default: str, description: str) -> Attribute:
    return Attribute(
        name="method", type="enum", values=values, default=default, description=description
    )


_COMPUTE_ACTION = _INFRA + "compute/action#"
_STORAGE_ACTION = _INFRA + "storage/action#"
_NETWORK_ACTION = _INFRA + "network/action#"

COMPUTE_START = Action(scheme=_COMPUTE_ACTION, term="start", title="Start the compute instance")
COMPUTE_STOP = Action(
    scheme=_COMPUTE_ACTION,
    term="stop",
    title="Stop the compute instance",
    attributes=(_method(("graceful", "acpioff", "poweroff"), "acpioff", "How to stop"),),
)
COMPUTE_RESTART = Action(
    scheme=_COMPUTE_ACTION,
    term="restart",
    title="Restart the compute instance",
    attributes=(_method(("graceful", "warm", "cold"), "cold", "How to restart"),),
)
COMPUTE_SUSPEND = Action(
    scheme=_COMPUTE_ACTION,
    term="suspend",
    title="Suspend the compute instance",
    attributes=(_method(("hibernate", "suspend"), "suspend", "How to suspend"),),
)
STORAGE_ONLINE = Action(scheme=_STORAGE_ACTION, term="online", title="Bring the storage online")
STORAGE_OFFLINE = Action(scheme=_STORAGE_ACTION, term="offline", title="Take the storage offline")
STORAGE_BACKUP = Action(scheme=_STORAGE_ACTION, term="backup", title="Back the storage up")
STORAGE_SNAPSHOT = Action(scheme=_STORAGE_ACTION, term="snapshot", title="Snapshot the storage")
STORAGE_RESIZE = Action(
    scheme=_STORAGE_ACTION,
    term="resize",
    title="Resize the storage",
    attributes=(
        Attribute(name="size", type="number", required=True, description="New size in GiB"),
    ),
)
NETWORK_UP = Action(scheme=_NETWORK_ACTION, term="up", title="Bring the network up")
NETWORK_DOWN = Action(scheme=_NETWORK_ACTION, term="down", title="Take the network down")

ENTITY = Kind(
    scheme=CORE,
    term="entity",
    title="Entity",
    attributes=(
        Attribute(
            name="occi.core.id", mutable=False, description="Identifier assigned by the server"
        ),
        Attribute(name="occi.core.title", description="Display name of the instance"),
    ),
)
RESOURCE = Kind(
    scheme=CORE,
    term="resource",
    title="Resource",
    parent=ENTITY,
    location="/resource/",
    attributes=(Attribute(name="occi.core.summary", description="Summarizing description"),),
)
LINK = Kind(
    scheme=CORE,
    term="link",
    title="Link",
    parent=ENTITY,
    location="/link/",
    attributes=(
        Attribute(
            name="occi.core.source", mutable=False, required=True, description="Source resource"
        ),
        Attribute(
            name="occi.core.target", mutable=False, required=True, description="Target resource"
        ),
        Attribute(name="occi.core.source.kind", mutable=False, description="Kind of the source"),
        Attribute(name="occi.core.target.kind", mutable=False, description="Kind of the target"),
    ),
)
COMPUTE = Kind(
    scheme=INFRASTRUCTURE,
    term="compute",
    title="Compute Resource",
    parent=RESOURCE,
    location="/compute/",
    actions=(COMPUTE_START, COMPUTE_STOP, COMPUTE_RESTART, COMPUTE_SUSPEND),
    attributes=(
        Attribute(
            name="occi.compute.architecture",
            type="enum",
            values=("x86", "x64"),
            default="x64",
            description="CPU architecture of the instance",
        ),
        Attribute(
            name="occi.compute.cores",
            type="integer",
            minimum=1,
            default=DEFAULT_CORES,
            description="Number of virtual CPU cores",
        ),
        Attribute(name="occi.compute.hostname", description="Fully qualified DNS hostname"),
        Attribute(
            name="occi.compute.share",
            type="integer",
            minimum=0,
            description="Relative number of CPU shares",
        ),
        Attribute(
            name="occi.compute.speed",
            type="number",
            default=DEFAULT_SPEED_GHZ,
            description="CPU clock frequency in GHz",
        ),
        Attribute(
            name="occi.compute.memory",
            type="number",
            default=DEFAULT_MEMORY_GIB,
            description="Maximum RAM in GiB",
        ),
        *_state("occi.compute", ("active", "inactive", "suspended", "error")),
    ),
)
STORAGE = Kind(
    scheme=INFRASTRUCTURE,
    term="storage",
    title="Storage Resource",
    parent=RESOURCE,
    location="/storage/",
    actions=(STORAGE_ONLINE, STORAGE_OFFLINE, STORAGE_BACKUP, STORAGE_SNAPSHOT, STORAGE_RESIZE),
    attributes=(
        Attribute(
            name="occi.storage.size",
            type="number",
            required=True,
            description="Storage size in GiB",
        ),
        *_state("occi.storage", ("online", "offline", "error")),
    ),
)
STORAGELINK = Kind(
    scheme=INFRASTRUCTURE,
    term="storagelink",
    title="StorageLink Link",
    parent=LINK,
    location="/storagelink/",
    attributes=(
        Attribute(name="occi.storagelink.deviceid", description="Device identifier"),
        Attribute(name="occi.storagelink.mountpoint", description="Mount point in the guest"),
        *_state("occi.storagelink", ("active", "inactive", "error")),
    ),
)
NETWORK = Kind(
    scheme=INFRASTRUCTURE,
    term="network",
    title="Network Resource",
    parent=RESOURCE,
    location="/network/",
    actions=(NETWORK_UP, NETWORK_DOWN),
    attributes=(
        Attribute(
            name="occi.network.vlan",
            type="integer",
            minimum=0,
            maximum=4095,
            description="802.1q VLAN identifier",
        ),
        Attribute(name="occi.network.label", description="Tag based VLAN"),
        *_state("occi.network", ("active", "inactive", "error")),
    ),
)
NETWORKINTERFACE = Kind(
    scheme=INFRASTRUCTURE,
    term="networkinterface",
    title="NetworkInterface Link",
    parent=LINK,
    location="/networkinterface/",
    attributes=(
        Attribute(
            name="occi.networkinterface.interface",
            mutable=False,
            description="Identifier of the device interface",
        ),
        Attribute(
            name="occi.networkinterface.mac",
            pattern=r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}",
            description="MAC address of the device interface",
        ),
        *_state("occi.networkinterface", ("active", "inactive", "error")),
    ),
)


def _ip_mixin(term: str, prefix: str, applies: Kind, title: str) -> Mixin:
    return Mixin(
        scheme=f"{_INFRA}{applies.term}#",
        term=term,
        title=title,
        applies=(applies,),
        location=f"/{term}/",
        attributes=(
            Attribute(name=f"{prefix}.address", description="IP address (CIDR for networks)"),
            Attribute(name=f"{prefix}.gateway", description="IP address of the gateway"),
            Attribute(
                name=f"{prefix}.allocation",
                type="enum",
                values=("dynamic", "static"),
                description="Address allocation: dynamic (DHCP) or static",
            ),
        ),
    )


IPNETWORK = _ip_mixin("ipnetwork", "occi.network", NETWORK, "IP Network Mixin")
IPNETWORKINTERFACE = _ip_mixin(
    "ipnetworkinterface", "occi.networkinterface", NETWORKINTERFACE, "IP Network Interface Mixin"
)
OS_TPL = Mixin(
    scheme=INFRASTRUCTURE,
    term="os_tpl",
    title="OS Template",
    applies=(COMPUTE,),
    location="/os_tpl/",
)
RESOURCE_TPL = Mixin(
    scheme=INFRASTRUCTURE,
    term="resource_tpl",
    title="Resource Template",
    applies=(COMPUTE,),
    location="/resource_tpl/",
)

KINDS: tuple[Kind, ...] = (
    ENTITY,
    RESOURCE,
    LINK,
    COMPUTE,
    STORAGE,
    STORAGELINK,
    NETWORK,
    NETWORKINTERFACE,
)
MIXINS: tuple[Mixin, ...] = (IPNETWORK, IPNETWORKINTERFACE, OS_TPL, RESOURCE_TPL)
#: Every standard action, in the order the kinds define them.
ACTIONS: tuple[Action, ...] = tuple(a for k in KINDS for a in k.actions)


def slug(name: str) -> str | None:
    """A term made from a display name (``Ubuntu 22.04`` → ``ubuntu-22.04``),
    or None if nothing of it is usable; the caller keeps terms unique."""
    text = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return text or None


def os_template(
    term: str, title: str, *, scheme: str = OS_TPL_SCHEME, location: str | None = None
) -> Mixin:
    """The ``os_tpl`` of one library drive: creating a compute with it images
    a new drive from that library drive (GFD.224 §OS Template)."""
    return Mixin(
        scheme=scheme,
        term=term,
        title=title,
        depends=(OS_TPL,),
        applies=(COMPUTE,),
        location=location or f"/os_tpl/{term}/",
    )


def resource_template(
    term: str,
    title: str,
    *,
    cores: int,
    memory: float,
    speed: float,
    scheme: str = RESOURCE_TPL_SCHEME,
    location: str | None = None,
) -> Mixin:
    """A size: ``memory`` in GiB, ``speed`` in GHz, carried as attribute
    defaults that override the compute kind's (GFD.224 §Resource Template)."""
    return Mixin(
        scheme=scheme,
        term=term,
        title=title,
        depends=(RESOURCE_TPL,),
        applies=(COMPUTE,),
        location=location or f"/resource_tpl/{term}/",
        attributes=(
            Attribute(name="occi.compute.cores", type="integer", minimum=1, default=cores),
            Attribute(name="occi.compute.memory", type="number", default=memory),
            Attribute(name="occi.compute.speed", type="number", default=speed),
        ),
    )


def query_interface(
    os_templates: Iterable[Mixin] = (),
    resource_templates: Iterable[Mixin] = (),
    extensions: Iterable[Mixin] = (),
) -> list[Category]:
    """Everything the query interface shows: kinds, mixins (the standard ones,
    then the templates, then the provider's own ``extensions``), then every
    action of those, each once."""
    mixins = [*MIXINS, *os_templates, *resource_templates, *extensions]
    actions: dict[str, Action] = {}
    owners: list[Kind | Mixin] = [*KINDS, *mixins]
    for owner in owners:
        for action in owner.actions:
            actions.setdefault(action.id, action)
    return [*KINDS, *mixins, *actions.values()]


def filter_categories(categories: Sequence[Category], requested: Iterable[str]) -> list[Category]:
    """The categories "related to" the requested type identifiers (GFD.223
    §Filtering), in their original order; nothing requested means all.

    Related means: the category itself; a kind inheriting from it; a mixin
    depending on it (``os_tpl`` → every OS template) or applying to it
    (``compute`` → the templates); and the actions of every kind or mixin so
    chosen. Unknown identifiers select nothing.
    """
    wanted = set(requested)
    if not wanted:
        return list(categories)
    chosen: set[str] = set()
    for c in categories:
        if (
            c.id in wanted
            or (isinstance(c, Kind) and any(k.id in wanted for k in _kind_chain(c)))
            or (
                isinstance(c, Mixin)
                and (
                    any(m.id in wanted for m in _mixin_closure(c.depends))
                    or any(k.id in wanted for k in c.applies)
                )
            )
        ):
            chosen.add(c.id)
    for c in categories:
        if isinstance(c, Kind | Mixin) and c.id in chosen:
            chosen.update(a.id for a in c.actions)
    return [c for c in categories if c.id in chosen]


class Registry:
    """The categories of one query interface, looked up by identifier or
    location; built per request or cached while the templates don't change."""

    def __init__(self, categories: Iterable[Category]) -> None:
        self.categories = tuple(categories)
        self._by_id: dict[str, Category] = {}
        self._by_location: dict[str, Kind | Mixin] = {}
        for c in self.categories:
            if c.id in self._by_id:
                raise ValueError(f"{c.id} is defined twice")
            self._by_id[c.id] = c
            if isinstance(c, Kind | Mixin) and c.location is not None:
                if c.location in self._by_location:
                    raise ValueError(f"{c.location} is the location of two categories")
                self._by_location[c.location] = c

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(c for c in self.categories if isinstance(c, Kind))

    @property
    def mixins(self) -> tuple[Mixin, ...]:
        return tuple(c for c in self.categories if isinstance(c, Mixin))

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(c for c in self.categories if isinstance(c, Action))

    def get(self, type_id: str) -> Category | None:
        return self._by_id.get(type_id)

    def kind(self, type_id: str) -> Kind | None:
        c = self._by_id.get(type_id)
        return c if isinstance(c, Kind) else None

    def mixin(self, type_id: str) -> Mixin | None:
        c = self._by_id.get(type_id)
        return c if isinstance(c, Mixin) else None

    def action(self, type_id: str) -> Action | None:
        c = self._by_id.get(type_id)
        return c if isinstance(c, Action) else None

    def at(self, location: str) -> Kind | Mixin | None:
        """The kind or mixin whose collection lives at this path."""
        return self._by_location.get(location)

    def filter(self, requested: Iterable[str]) -> list[Category]:
        return filter_categories(self.categories, requested)
