"""The three OCCI renderings, both ways.

``text/plain`` (GFD.229 §6: ``Name: value`` lines in the body), ``text/occi``
(GFD.229 §7: the same fields as HTTP headers, body ``OK``) and
``application/occi+json`` (GFD.226). Entities, entity collections, the query
interface's categories and action invocations go out through ``render_*``
as a :class:`Rendered` (body bytes and wire-ready headers) and come in through
``parse_*``. Nothing here knows HTTP beyond header pairs.

Two promises, both tested over generated input:

- every parser raises :class:`OcciParseError` on bad input and nothing else,
  whatever the input;
- what a parser accepts, each renderer writes out and the same rendering's
  parser reads back unchanged. The one loss: the text renderings carry array
  and object attribute values as quoted JSON strings (GFD.229 has no syntax
  for them), and JSON carries no entity locations (GFD.226 has no member).

Field names: ``Category``, ``Link``, ``X-OCCI-Attribute``, ``X-OCCI-Location``.
rOCCI's ``X-OCCI-Category`` / ``X-OCCI-Link`` are read as aliases.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

from overcast.api.occi.categories import (
    ATTRIBUTE_NAME,
    RESOURCE,
    TERM,
    Action,
    Attribute,
    AttributeValue,
    Category,
    JsonValue,
    Kind,
    Mixin,
    split_id,
)
from overcast.model.errors import UsageError

__all__ = [
    "ActionInvocation",
    "AttributeRef",
    "CategoryRef",
    "Collection",
    "EntityRendering",
    "Format",
    "HeaderSource",
    "OcciParseError",
    "Rendered",
    "format_of",
    "negotiate",
    "parse_action",
    "parse_categories",
    "parse_collection",
    "parse_entity",
    "render_action",
    "render_categories",
    "render_collection",
    "render_entity",
]


class OcciParseError(UsageError, ValueError):
    """A rendering that does not parse; the message says what and where.

    A :class:`UsageError`, so the API's one error table answers it with 400.
    """


class Format(enum.Enum):
    """A rendering; the value is its canonical media type."""

    TEXT_PLAIN = "text/plain"
    TEXT_OCCI = "text/occi"
    JSON = "application/occi+json"


_MEDIA_TYPES: dict[str, Format] = {
    "text/plain": Format.TEXT_PLAIN,
    "text/occi+plain": Format.TEXT_PLAIN,
    "text/occi": Format.TEXT_OCCI,
    "application/occi+json": Format.JSON,
    "application/json": Format.JSON,
}


def format_of(media_type: str | None) -> Format | None:
    """The rendering a ``Content-Type`` names, or None (parameters ignored)."""
    if not media_type:
        return None
    return _MEDIA_TYPES.get(media_type.split(";")[0].strip().lower())


def negotiate(accept: str | None) -> tuple[Format, str] | None:
    """The rendering and the exact media type to answer an ``Accept`` with,
    or None when nothing acceptable is offered (406).

    Highest ``q`` wins, then the more specific range, then the client's
    order; wildcards (and no ``Accept`` at all) mean ``text/plain``, the one
    rendering GFD.229 makes every client understand.
    """
    if accept is None or not accept.strip():
        return Format.TEXT_PLAIN, "text/plain"
    ranges: list[tuple[float, int, int, str]] = []
    refused: set[str] = set()
    for order, part in enumerate(accept.split(",")):
        media, *params = part.split(";")
        media = media.strip().lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        if not media:
            continue
        if q == 0.0:
            refused.add(media)
            continue
        ranges.append((-q, -(2 - media.count("*")), order, media))
    for _q, _specific, _order, media in sorted(ranges):
        if media in _MEDIA_TYPES:
            return _MEDIA_TYPES[media], media
        for candidate, fmt in _MEDIA_TYPES.items():
            if candidate not in refused and media in ("*/*", candidate.split("/")[0] + "/*"):
                return fmt, candidate
    return None


# -- data ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EntityRendering:
    """A resource or link as a rendering carries it.

    ``kind``, ``mixins`` and ``actions`` are type identifiers; ``attributes``
    hold every model attribute under its rendered name (GFD.229 §5.5.1:
    ``occi.core.id``, ``occi.core.title``, ``occi.core.summary``,
    ``occi.core.source``, ``occi.core.target``, ``occi.core.target.kind``, ...)
    whichever rendering they came from. ``links`` are a resource's links,
    themselves entities; ``location`` is the entity's absolute URL (used for
    action links and collections; JSON has no member for it).
    """

    kind: str
    mixins: tuple[str, ...] = ()
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    actions: tuple[str, ...] = ()
    links: tuple[EntityRendering, ...] = ()
    location: str | None = None

    def _text(self, name: str) -> str | None:
        value = self.attributes.get(name)
        return value if isinstance(value, str) else None

    @property
    def id(self) -> str | None:
        return self._text("occi.core.id")

    @property
    def title(self) -> str | None:
        return self._text("occi.core.title")

    @property
    def source(self) -> str | None:
        return self._text("occi.core.source")

    @property
    def target(self) -> str | None:
        return self._text("occi.core.target")

    @property
    def target_kind(self) -> str | None:
        return self._text("occi.core.target.kind")


@dataclass(frozen=True, kw_only=True)
class ActionInvocation:
    """``POST …?action=term`` with its parameters (GFD.229 §5.1.1, GFD.226 §3.1.1)."""

    action: str
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True)
class AttributeRef:
    """An attribute definition as far as the text rendering shows one."""

    name: str
    mutable: bool = True
    required: bool = False


@dataclass(frozen=True, kw_only=True)
class CategoryRef:
    """A category as a client wrote it: a filter, or a parsed query interface.

    ``cls`` is None when the client left ``class`` out; ``rel`` is a kind's
    parent or a mixin's ``depends``.
    """

    scheme: str
    term: str
    cls: Literal["kind", "mixin", "action"] | None = None
    title: str | None = None
    rel: tuple[str, ...] = ()
    location: str | None = None
    attributes: tuple[AttributeRef, ...] = ()
    actions: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.scheme + self.term


@dataclass(frozen=True, kw_only=True)
class Collection:
    """An entity collection: the text renderings list locations, JSON
    carries whole entities."""

    locations: tuple[str, ...] = ()
    entities: tuple[EntityRendering, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """A rendering ready for a response.

    ``headers`` are wire-ready: one per field name, values joined with
    ``", "`` as GFD.229 §7 recommends, non-ASCII text carried as UTF-8 bytes
    in a latin-1 string (what Starlette sends as is). ``media_type`` is the
    format's canonical type; answer with the one the client asked for.
    """

    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()


class _MultiItems(Protocol):
    def multi_items(self) -> list[tuple[str, str]]: ...


#: Request headers: Starlette's ``Headers``, a mapping, or (name, value) pairs.
HeaderSource: TypeAlias = (
    "_MultiItems | Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]"
)

# -- shared syntax --------------------------------------------------------------

#: Characters no text field can carry: controls but tab, the Unicode line
#: separators some clients split on, and lone surrogates (not UTF-8).
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: A URI reference as far as we need: no space, quote or angle bracket.
_URI = re.compile(r"[^\s\"<>\\,\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TOKEN = re.compile(r"[^\s;,\"]+")
_FIELDS = {
    "category": "Category",
    "x-occi-category": "Category",
    "link": "Link",
    "x-occi-link": "Link",
    "x-occi-attribute": "X-OCCI-Attribute",
    "x-occi-location": "X-OCCI-Location",
}
_JSON_SCHEMA = "http://json-schema.org/draft-04/schema#"
_Fields: TypeAlias = list[tuple[str, str]]


def _fail(message: str) -> OcciParseError:
    return OcciParseError(message)


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _type_id(text: str, where: str) -> str:
    if split_id(text) is None:
        raise _fail(f"{where}: {_short(text)} is not a type identifier (scheme#term)")
    return text


def _uri(text: str, where: str) -> str:
    if not _URI.fullmatch(text):
        raise _fail(f"{where}: {_short(text)} is not a URI")
    return text


def _safe_text(text: str, where: str) -> str:
    if _UNSAFE.search(text):
        raise _fail(f"{where}: control characters are not allowed")
    return text


# -- text: rendering ------------------------------------------------------------


def _quote(text: str) -> str:
    if _UNSAFE.search(text):
        raise ValueError(f"{text!r} cannot be carried by a text rendering")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value_text(value: AttributeValue) -> str:
    """Strings quoted, numbers and booleans bare (GFD.229 §4.3)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be rendered")
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    return _quote(json.dumps(value, allow_nan=False))


def _scheme_term(type_id: str) -> tuple[str, str]:
    parts = split_id(type_id)
    if parts is None:
        raise ValueError(f"{type_id!r} is not a type identifier")
    return parts


def _category_ref_text(type_id: str, cls: str) -> str:
    scheme, term = _scheme_term(type_id)
    return f'{term}; scheme="{scheme}"; class="{cls}"'


def _link_text(link: EntityRendering) -> str:
    target = link.target
    if target is None or not _URI.fullmatch(target):
        raise ValueError(f"a link needs a URI occi.core.target, not {target!r}")
    rel = link.target_kind or RESOURCE.id
    parts = [f"<{target}>", f"rel={_quote(rel)}"]
    if link.location is not None:
        parts.append(f"self={_quote(link.location)}")
    parts.append(f"category={_quote(' '.join([link.kind, *link.mixins]))}")
    for name, value in link.attributes.items():
        if name in _LINK_PARAMS:
            raise ValueError(f"a link attribute cannot be called {name} in a Link header")
        if name not in ("occi.core.target", "occi.core.target.kind"):
            parts.append(f"{name}={_value_text(value)}")
    return "; ".join(parts)


def _entity_fields(entity: EntityRendering) -> _Fields:
    fields = [("Category", _category_ref_text(entity.kind, "kind"))]
    fields += [("Category", _category_ref_text(m, "mixin")) for m in entity.mixins]
    fields += [("Link", _link_text(link)) for link in entity.links]
    for action in entity.actions:
        _scheme, term = _scheme_term(action)
        fields.append(("Link", f"<{entity.location or ''}?action={term}>; rel={_quote(action)}"))
    fields += [("X-OCCI-Attribute", f"{n}={_value_text(v)}") for n, v in entity.attributes.items()]
    return fields


def _attribute_def_text(attribute: Attribute) -> str:
    props = [
        p
        for p, on in (("immutable", not attribute.mutable), ("required", attribute.required))
        if on
    ]
    return attribute.name + ("{" + " ".join(props) + "}" if props else "")


def _category_text(category: Category) -> str:
    """The full form the query interface shows (GFD.229 §4.1)."""
    parts = [category.term, f'scheme="{category.scheme}"', f'class="{category.cls}"']
    if category.title:
        parts.append(f"title={_quote(category.title)}")
    rel = None
    if isinstance(category, Kind) and category.parent is not None:
        rel = category.parent.id
    elif isinstance(category, Mixin) and category.depends:
        rel = category.depends[0].id  # GFD.229 §5.5.2: only the first of depends
    if rel is not None:
        parts.append(f'rel="{rel}"')
    if isinstance(category, Kind | Mixin) and category.location is not None:
        parts.append(f'location="{category.location}"')
    if category.attributes:
        defs = " ".join(_attribute_def_text(a) for a in category.attributes)
        parts.append(f'attributes="{defs}"')
    if isinstance(category, Kind | Mixin) and category.actions:
        parts.append(f'actions="{" ".join(a.id for a in category.actions)}"')
    return "; ".join(parts)


def _wire(text: str) -> str:
    """Header values travel as latin-1; carry UTF-8 bytes through it."""
    return text.encode("utf-8").decode("latin-1")


def _rendered(fields: _Fields, fmt: Format) -> Rendered:
    if fmt is Format.TEXT_PLAIN:
        body = "".join(f"{name}: {value}\n" for name, value in fields)
        return Rendered(body.encode("utf-8"), fmt.value)
    joined: dict[str, list[str]] = {}
    for name, value in fields:
        joined.setdefault(name, []).append(value)
    headers = tuple((name, _wire(", ".join(values))) for name, values in joined.items())
    return Rendered(b"OK", fmt.value, headers)


# -- text: parsing --------------------------------------------------------------


def _body_fields(body: bytes | str) -> _Fields:
    """``Name: value`` lines; a line starting with space or tab continues the
    previous one (RFC 822 folding, as the OGF documents print long fields)."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _fail(f"the body is not UTF-8 (byte {err.start})") from err
    names: list[str] = []
    parts: list[list[str]] = []  # joined once at the end: folding stays linear
    for number, raw in enumerate(body.removeprefix("\ufeff").split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        if line[0] in " \t":
            if not parts:
                raise _fail(f"line {number}: a continuation with nothing to continue")
            parts[-1].append(line.strip())
            continue
        name, colon, value = line.partition(":")
        canonical = _FIELDS.get(name.strip().lower())
        if not colon or canonical is None:
            raise _fail(
                f"line {number}: expected Category, Link, X-OCCI-Attribute or X-OCCI-Location"
            )
        names.append(canonical)
        parts.append([value.strip()])
    return [(name, " ".join(p)) for name, p in zip(names, parts, strict=True)]


def _from_wire(text: str | bytes) -> str:
    """Undo what latin-1 header decoding did to UTF-8 bytes, when it did."""
    if isinstance(text, str):
        try:
            raw = text.encode("latin-1")
        except UnicodeEncodeError:
            return text  # already decoded
    else:
        raw = text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _header_fields(headers: HeaderSource) -> _Fields:
    pairs: Iterable[tuple[str | bytes, str | bytes]]
    if hasattr(headers, "multi_items"):
        pairs = headers.multi_items()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    fields: _Fields = []
    for name, value in pairs:
        canonical = _FIELDS.get(_from_wire(name).strip().lower())
        if canonical is not None:
            fields.append((canonical, _from_wire(value).strip()))
    return fields


def _items(value: str) -> list[str]:
    """Split a field's ``#rule`` list at commas outside quotes and ``<…>``."""
    items: list[str] = []
    start, quoted, escaped, angled = 0, False, False, False
    for i, char in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angled = True
        elif char == ">":
            angled = False
        elif char == "," and not angled:
            items.append(value[start:i])
            start = i + 1
    items.append(value[start:])
    return [item.strip() for item in items if item.strip()]


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _quoted(text: str, pos: int, where: str) -> tuple[str, int]:
    """A quoted-string starting at ``pos`` (RFC 7230: backslash escapes)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            if pos + 1 >= len(text):
                break
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    raise _fail(f"{where}: a quoted string is not closed")


def _value(text: str, pos: int, where: str) -> tuple[str, bool, int]:
    """A parameter value: ``(text, was quoted, position after)``."""
    if pos < len(text) and text[pos] == '"':
        value, pos = _quoted(text, pos, where)
        return value, True, pos
    match = _TOKEN.match(text, pos)
    if match is None:
        raise _fail(f"{where}: a value is missing")
    return match.group(), False, match.end()


def _params(text: str, pos: int, where: str) -> dict[str, tuple[str, bool]]:
    """``*( ";" name "=" value )`` with an optional trailing ``;`` (the
    examples of GFD.229 itself end in one). A ``;`` left out between two
    parameters that space separates is forgiven: the same examples do that
    too, and nothing else can be meant."""
    params: dict[str, tuple[str, bool]] = {}
    while True:
        after = _skip(text, pos)
        if after >= len(text):
            return params
        if text[after] == ";":
            pos = _skip(text, after + 1)
            if pos >= len(text):
                return params
        elif not (params and after > pos and _PARAM_START.match(text, after)):
            raise _fail(f"{where}: expected ';' before {_short(text[after:])}")
        else:
            pos = after
        match = ATTRIBUTE_NAME.match(text, pos)
        if match is None:
            raise _fail(f"{where}: expected a parameter name at {_short(text[pos:])}")
        name = match.group()
        pos = _skip(text, match.end())
        if pos >= len(text) or text[pos] != "=":
            raise _fail(f"{where}: expected '=' after {name}")
        value, quoted, pos = _value(text, _skip(text, pos + 1), where)
        if name in params:
            raise _fail(f"{where}: {name} is given twice")
        params[name] = (value, quoted)


_PARAM_START = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*[ \t]*=")


def _typed(value: str, quoted: bool, where: str) -> AttributeValue:
    """A quoted string, a number or a boolean (GFD.229 §4.3)."""
    if quoted:
        return _safe_text(value, where)
    if value in ("true", "false"):
        return value == "true"
    try:
        if _INT.fullmatch(value):
            return int(value)
        if _FLOAT.fullmatch(value):
            number = float(value)
            if math.isfinite(number):
                return number
    except ValueError:
        pass
    raise _fail(f"{where}: {_short(value)} is not a quoted string, a number or a boolean")


def _attribute_item(item: str) -> tuple[str, AttributeValue]:
    match = ATTRIBUTE_NAME.match(item)
    if match is None:
        raise _fail(f"X-OCCI-Attribute: {_short(item)} does not start with a name")
    name = match.group()
    pos = _skip(item, match.end())
    if pos >= len(item) or item[pos] != "=":
        raise _fail(f"X-OCCI-Attribute: expected '=' after {name}")
    value, quoted, pos = _value(item, _skip(item, pos + 1), f"attribute {name}")
    pos = _skip(item, pos)
    if pos < len(item) and item[pos:].strip() != ";":
        raise _fail(f"attribute {name}: unexpected {_short(item[pos:])} after the value")
    return name, _typed(value, quoted, f"attribute {name}")


_ATTRIBUTE_DEF = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\{([^{}]*)\})?(?=\s|$)")


def _attribute_defs(text: str, where: str) -> tuple[AttributeRef, ...]:
    """``name{immutable required} name …`` (GFD.229 §4.1)."""
    defs: list[AttributeRef] = []
    pos = 0
    while (pos := _skip(text, pos)) < len(text):
        found = _ATTRIBUTE_DEF.match(text, pos)
        if found is None:
            raise _fail(f"{where}: bad attribute definition at {_short(text[pos:])}")
        props = (found.group(2) or "").split()
        if not set(props) <= {"immutable", "required"}:
            raise _fail(f"{where}: attribute properties are immutable and required")
        defs.append(AttributeRef(found.group(1), "immutable" not in props, "required" in props))
        pos = found.end()
    return tuple(defs)


def _category_item(item: str) -> CategoryRef:
    end = item.find(";")
    term = (item if end < 0 else item[:end]).strip()
    if not TERM.fullmatch(term):
        raise _fail(f"Category: {_short(term)} is not a term")
    where = f"Category {term}"
    params = _params(item, len(item) if end < 0 else end, where)
    scheme = params.pop("scheme", ("", False))[0]
    if split_id(scheme + term) is None:
        raise _fail(f"{where}: scheme {_short(scheme)} is not a URI ending in '#'")
    cls_text = params.pop("class", None)
    if cls_text is not None and cls_text[0] not in ("kind", "mixin", "action"):
        raise _fail(f"{where}: class must be kind, mixin or action")
    cls: Literal["kind", "mixin", "action"] | None = None
    if cls_text is not None:
        cls = "kind" if cls_text[0] == "kind" else "mixin" if cls_text[0] == "mixin" else "action"
    title = params.pop("title", None)
    rel = params.pop("rel", ("", False))[0].split()
    location = params.pop("location", None)
    return CategoryRef(
        scheme=scheme,
        term=term,
        cls=cls,
        title=None if title is None else _safe_text(title[0], where),
        rel=tuple(_type_id(r, where) for r in rel),
        location=None if location is None else _uri(location[0], where),
        attributes=_attribute_defs(params.pop("attributes", ("", False))[0], where),
        actions=tuple(_type_id(a, where) for a in params.pop("actions", ("", False))[0].split()),
    )


def _link_item(item: str) -> EntityRendering | tuple[str, str]:
    """A resource's link, or ``(location, action id)`` for an action link."""
    if not item.startswith("<") or ">" not in item:
        raise _fail(f"Link: {_short(item)} does not start with <URI>")
    uri = item[1 : item.index(">")]
    params = _params(item, item.index(">") + 1, f"Link <{uri}>")
    rel_text = params.pop("rel", None)
    if rel_text is None:
        raise _fail(f"Link <{uri}>: rel is missing")
    rel = [_type_id(r, f"Link <{uri}>") for r in rel_text[0].split()]
    if not rel:
        raise _fail(f"Link <{uri}>: rel is empty")
    location, question, query = uri.rpartition("?")
    if question and not params and re.fullmatch(r"action=" + TERM.pattern, query):
        return (_uri(location, "Link") if location else "", rel[0])
    where = f"Link <{uri}>"
    attributes: dict[str, AttributeValue] = {
        "occi.core.target": _uri(uri, "Link"),
        "occi.core.target.kind": rel[0],
    }
    self_text = params.pop("self", None)
    categories = params.pop("category", ("", False))[0].split()
    categories = [_type_id(c, where) for c in categories] or [_LINK_ID]
    for name, (value, quoted) in params.items():
        if name in attributes:
            raise _fail(f"{where}: {name} is given twice")
        try:
            attributes[name] = _typed(value, quoted, f"{where} {name}")
        except OcciParseError:
            if quoted:
                raise
            attributes[name] = _safe_text(value, f"{where} {name}")  # GFD.229: a bare token
    return EntityRendering(
        kind=categories[0],
        mixins=tuple(categories[1:]),
        attributes=attributes,
        location=None if self_text is None else _uri(self_text[0], where),
    )


_LINK_ID = "http://schemas.ogf.org/occi/core#link"
#: Parameter names of GFD.229's Link syntax, so no link attribute's names.
_LINK_PARAMS = frozenset({"rel", "self", "category"})


def _entity_from_fields(fields: _Fields) -> EntityRendering:
    kind: str | None = None
    mixins: list[str] = []
    attributes: dict[str, AttributeValue] = {}
    actions: list[str] = []
    links: list[EntityRendering] = []
    location: str | None = None
    for name, value in fields:
        for item in _items(value):
            if name == "Category":
                category = _category_item(item)
                if category.cls == "kind":
                    if kind is not None:
                        raise _fail("an entity has one kind, this rendering gives two")
                    kind = category.id
                elif category.cls == "mixin":
                    if category.id not in mixins:
                        mixins.append(category.id)
                else:
                    raise _fail(
                        f"Category {category.term}: an entity's categories are kinds or mixins"
                    )
            elif name == "Link":
                link = _link_item(item)
                if isinstance(link, tuple):
                    location = location or link[0] or None
                    actions.append(link[1])
                else:
                    links.append(link)
            elif name == "X-OCCI-Attribute":
                key, parsed = _attribute_item(item)
                if key in attributes:
                    raise _fail(f"attribute {key} is given twice")
                attributes[key] = parsed
            else:
                raise _fail(f"{name} does not belong in an entity rendering")
    if kind is None:
        raise _fail('no kind: an entity rendering needs a Category with class="kind"')
    return EntityRendering(
        kind=kind,
        mixins=tuple(mixins),
        attributes=attributes,
        actions=tuple(actions),
        links=tuple(links),
        location=location,
    )


def _action_from_fields(fields: _Fields) -> ActionInvocation:
    action: str | None = None
    attributes: dict[str, AttributeValue] = {}
    for name, value in fields:
        for item in _items(value):
            if name == "Category":
                category = _category_item(item)
                if category.cls != "action" or action is not None:
                    raise _fail('an action invocation has one Category, of class="action"')
                action = category.id
            elif name == "X-OCCI-Attribute":
                key, parsed = _attribute_item(item)
                if key in attributes:
                    raise _fail(f"attribute {key} is given twice")
                attributes[key] = parsed
            else:
                raise _fail(f"{name} does not belong in an action invocation")
    if action is None:
        raise _fail('no action: an invocation needs a Category with class="action"')
    return ActionInvocation(action=action, attributes=attributes)


# -- JSON -----------------------------------------------------------------------


def _entity_json(entity: EntityRendering, *, nested: bool = False) -> dict[str, JsonValue]:
    """GFD.226 §3.1: core attributes become members, the rest ``attributes``."""
    attributes: dict[str, JsonValue] = dict(entity.attributes)
    out: dict[str, JsonValue] = {"kind": entity.kind}
    if entity.mixins:
        out["mixins"] = list(entity.mixins)
    members: dict[str, JsonValue] = {}
    for member in ("id", "summary", "title"):
        if isinstance(attributes.get(f"occi.core.{member}"), str):
            members[member] = attributes.pop(f"occi.core.{member}")
    for end in ("source", "target"):
        location = attributes.get(f"occi.core.{end}")
        if isinstance(location, str) and _URI.fullmatch(location):
            ref: dict[str, JsonValue] = {"location": attributes.pop(f"occi.core.{end}")}
            kind = attributes.get(f"occi.core.{end}.kind")
            if isinstance(kind, str) and split_id(kind) is not None:
                ref["kind"] = attributes.pop(f"occi.core.{end}.kind")
            members[end] = ref
    if attributes:
        out["attributes"] = attributes
    if entity.actions:
        out["actions"] = list(entity.actions)
    if "id" in members:
        out["id"] = members.pop("id")
    if entity.links and not nested:
        out["links"] = [_entity_json(link, nested=True) for link in entity.links]
    out.update(members)
    return out


def _attribute_json(attribute: Attribute) -> dict[str, JsonValue]:
    """GFD.226 §3.5.1; integer and enum ride on a JSON-schema ``pattern``."""
    schema: dict[str, JsonValue] = {}
    if attribute.type == "enum":
        schema.update(type="string", enum=list(attribute.values))
    elif attribute.type == "integer":
        schema["type"] = "integer"
    if attribute.pattern is not None:
        schema.update(type="string", pattern=f"^(?:{attribute.pattern})$")
    if attribute.minimum is not None:
        schema["minimum"] = attribute.minimum
    if attribute.maximum is not None:
        schema["maximum"] = attribute.maximum
    json_type = {"enum": "string", "integer": "number"}.get(attribute.type, attribute.type)
    out: dict[str, JsonValue] = {
        "mutable": attribute.mutable,
        "required": attribute.required,
        "type": json_type,
    }
    if schema:
        out["pattern"] = {"$schema": _JSON_SCHEMA, **schema}
    if attribute.default is not None:
        out["default"] = attribute.default
    if attribute.description:
        out["description"] = attribute.description
    return out


def _category_json(category: Category) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {"term": category.term, "scheme": category.scheme}
    if category.title:
        out["title"] = category.title
    if category.attributes:
        out["attributes"] = {a.name: _attribute_json(a) for a in category.attributes}
    if isinstance(category, Kind | Mixin) and category.actions:
        out["actions"] = [a.id for a in category.actions]
    if isinstance(category, Kind) and category.parent is not None:
        out["parent"] = category.parent.id
    if isinstance(category, Mixin):
        if category.depends:
            out["depends"] = [m.id for m in category.depends]
        if category.applies:
            out["applies"] = [k.id for k in category.applies]
    if isinstance(category, Kind | Mixin) and category.location is not None:
        out["location"] = category.location
    return out


def _json_bytes(value: JsonValue) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _fail(f"JSON member {_short(key)} is given twice")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise _fail(f"JSON {name} is not a number OCCI can carry")


def _load_json(body: bytes | str) -> object:
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _fail(f"the body is not UTF-8 (byte {err.start})") from err
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except OcciParseError:
        raise
    except (ValueError, RecursionError) as err:
        raise _fail(f"the body is not JSON: {err}") from err


def _mapping(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _fail(f"{where}: expected a JSON object")
    return value


def _object(value: object, where: str, allowed: Iterable[str]) -> dict[str, object]:
    obj = _mapping(value, where)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise _fail(f"{where}: unknown member {_short(unknown[0])}")
    return obj


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"{where}: expected a string")
    return _safe_text(value, where)


def _ids(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(f"{where}: expected an array of type identifiers")
    return tuple(_type_id(_string(v, where), where) for v in value)


def _json_value(value: object, where: str) -> JsonValue:
    """Any JSON value, once checked to be one every renderer can write."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise _fail(f"{where}: a lone surrogate is not text")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(f"{where}: {value} is not a number OCCI can carry")
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list):
        return [_json_value(v, where) for v in value]
    if isinstance(value, dict):
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str) or _SURROGATE.search(key):
                raise _fail(f"{where}: {_short(str(key))} is not a member name")
            out[key] = _json_value(item, where)
        return out
    raise _fail(f"{where}: not a JSON value")


def _attribute_value(value: object, where: str) -> AttributeValue:
    if value is None:
        raise _fail(f"{where}: null is not an attribute value")
    if isinstance(value, str):
        return _safe_text(value, where)
    checked = _json_value(value, where)
    assert checked is not None
    return checked


_ENTITY_MEMBERS = ("kind", "mixins", "attributes", "actions", "id", "links", "summary", "title")
_LINK_MEMBERS = (
    "kind",
    "mixins",
    "attributes",
    "actions",
    "id",
    "source",
    "target",
    "rel",
    "title",
)


def _entity_from_json(value: object, where: str, *, nested: bool = False) -> EntityRendering:
    allowed = _LINK_MEMBERS if nested else (*_ENTITY_MEMBERS, "source", "target", "rel")
    obj = _object(value, where, allowed)
    if "kind" not in obj:
        raise _fail(f"{where}: kind is missing")
    kind = _type_id(_string(obj["kind"], f"{where} kind"), f"{where} kind")
    attributes: dict[str, AttributeValue] = {}
    raw = _mapping(obj.get("attributes", {}), f"{where} attributes")
    for name, item in raw.items():
        if not ATTRIBUTE_NAME.fullmatch(name) or (nested and name in _LINK_PARAMS):
            raise _fail(f"{where}: {_short(name)} is not an attribute name")
        attributes[name] = _attribute_value(item, f"attribute {name}")

    def member(name: str, text: str) -> None:
        if attributes.get(name, text) != text:
            raise _fail(f"{where}: {name} disagrees with its member")
        attributes[name] = text

    for key in ("id", "summary", "title"):
        if key in obj:
            member(f"occi.core.{key}", _string(obj[key], f"{where} {key}"))
    for end in ("source", "target"):
        if end in obj:
            ref = _object(obj[end], f"{where} {end}", ("location", "kind"))
            if "location" not in ref:
                raise _fail(f"{where} {end}: location is missing")
            member(f"occi.core.{end}", _uri(_string(ref["location"], where), f"{where} {end}"))
            if "kind" in ref:
                member(f"occi.core.{end}.kind", _type_id(_string(ref["kind"], where), where))
    if "rel" in obj and "occi.core.target.kind" not in attributes:
        attributes["occi.core.target.kind"] = _type_id(_string(obj["rel"], where), where)
    if nested:  # the text renderings carry these in a Link's <URI> and rel
        target = attributes.get("occi.core.target")
        if not isinstance(target, str) or not _URI.fullmatch(target):
            raise _fail(f"{where}: a link needs a target location")
        target_kind = attributes.get("occi.core.target.kind", RESOURCE.id)
        if not isinstance(target_kind, str) or split_id(target_kind) is None:
            raise _fail(f"{where}: the target kind is not a type identifier")
    links = obj.get("links", [])
    if not isinstance(links, list):
        raise _fail(f"{where}: links must be an array")
    return EntityRendering(
        kind=kind,
        mixins=_ids(obj.get("mixins", []), f"{where} mixins"),
        attributes=attributes,
        actions=_ids(obj.get("actions", []), f"{where} actions"),
        links=tuple(_entity_from_json(v, f"{where} link", nested=True) for v in links),
    )


def _category_from_json(value: object, cls: Literal["kind", "mixin", "action"]) -> CategoryRef:
    allowed = {
        "kind": ("term", "scheme", "title", "attributes", "actions", "parent", "location"),
        "mixin": (
            "term",
            "scheme",
            "title",
            "attributes",
            "actions",
            "depends",
            "applies",
            "location",
        ),
        "action": ("term", "scheme", "title", "attributes"),
    }[cls]
    obj = _object(value, cls, allowed)
    term = _string(obj.get("term"), f"{cls} term")
    scheme = _string(obj.get("scheme"), f"{cls} {term} scheme")
    where = f"{cls} {scheme}{term}"
    if split_id(scheme + term) is None:
        raise _fail(f"{where}: not a scheme and a term")
    defs: list[AttributeRef] = []
    raw = _mapping(obj.get("attributes", {}), f"{where} attributes")
    for name, spec in raw.items():
        if not ATTRIBUTE_NAME.fullmatch(name):
            raise _fail(f"{where}: {_short(name)} is not an attribute name")
        spec = _object(spec, f"{where} {name}", _ATTRIBUTE_MEMBERS)
        flags = [spec.get(flag, False) for flag in ("mutable", "required")]
        if not all(isinstance(f, bool) for f in flags):
            raise _fail(f"{where} {name}: mutable and required are booleans")
        _json_value(spec.get("default"), f"{where} {name}")
        defs.append(AttributeRef(name, bool(flags[0]), bool(flags[1])))
    rel = obj.get("parent", obj.get("depends", []))
    location = obj.get("location")
    _ids(obj.get("applies", []), f"{where} applies")
    return CategoryRef(
        scheme=scheme,
        term=term,
        cls=cls,
        title=None if "title" not in obj else _string(obj["title"], f"{where} title"),
        rel=_ids([rel] if isinstance(rel, str) else rel, f"{where} rel"),
        location=None if location is None else _uri(_string(location, where), where),
        attributes=tuple(defs),
        actions=_ids(obj.get("actions", []), f"{where} actions"),
    )


_ATTRIBUTE_MEMBERS = ("mutable", "required", "type", "pattern", "default", "description")
_JSON_CLASSES: tuple[tuple[str, Literal["kind", "mixin", "action"]], ...] = (
    ("kinds", "kind"),
    ("mixins", "mixin"),
    ("actions", "action"),
)

# -- the public surface -----------------------------------------------------------


def render_entity(entity: EntityRendering, fmt: Format) -> Rendered:
    """One resource or link (GFD.229 §5.1, GFD.226 §3.1)."""
    if fmt is Format.JSON:
        return Rendered(_json_bytes(_entity_json(entity)), fmt.value)
    return _rendered(_entity_fields(entity), fmt)


def render_collection(
    entities: Sequence[EntityRendering], fmt: Format, *, links: bool = False
) -> Rendered:
    """A collection: locations in the text renderings (each entity needs its
    ``location``), ``{"resources": […]}`` or, with ``links``, ``{"links": […]}``
    in JSON."""
    if fmt is Format.JSON:
        key = "links" if links else "resources"
        return Rendered(_json_bytes({key: [_entity_json(e) for e in entities]}), fmt.value)
    fields: _Fields = []
    for entity in entities:
        if entity.location is None or not _URI.fullmatch(entity.location):
            raise ValueError(f"{entity.id}: a collection lists locations, this has none")
        fields.append(("X-OCCI-Location", entity.location))
    return _rendered(fields, fmt)


def render_categories(categories: Sequence[Category], fmt: Format) -> Rendered:
    """The query interface (GFD.229 §5.4, GFD.226 §3.4), in the given order."""
    if fmt is Format.JSON:
        body: dict[str, JsonValue] = {
            "kinds": [_category_json(c) for c in categories if isinstance(c, Kind)],
            "mixins": [_category_json(c) for c in categories if isinstance(c, Mixin)],
            "actions": [_category_json(c) for c in categories if isinstance(c, Action)],
        }
        return Rendered(_json_bytes(body), fmt.value)
    return _rendered([("Category", _category_text(c)) for c in categories], fmt)


def render_action(invocation: ActionInvocation, fmt: Format) -> Rendered:
    """An action invocation, as a client sends it (GFD.229 §5.1.1, GFD.226 §3.1.1)."""
    if fmt is Format.JSON:
        body: dict[str, JsonValue] = {"action": invocation.action}
        if invocation.attributes:
            body["attributes"] = dict(invocation.attributes)
        return Rendered(_json_bytes(body), fmt.value)
    fields = [("Category", _category_ref_text(invocation.action, "action"))]
    fields += [
        ("X-OCCI-Attribute", f"{n}={_value_text(v)}") for n, v in invocation.attributes.items()
    ]
    return _rendered(fields, fmt)


def _fields(fmt: Format, body: bytes | str, headers: HeaderSource) -> _Fields:
    return _header_fields(headers) if fmt is Format.TEXT_OCCI else _body_fields(body)


def parse_entity(
    fmt: Format, body: bytes | str = b"", headers: HeaderSource = ()
) -> EntityRendering:
    """A resource or link a client sent (``text/occi`` reads the headers,
    the others the body)."""
    if fmt is Format.JSON:
        return _entity_from_json(_load_json(body), "entity")
    return _entity_from_fields(_fields(fmt, body, headers))


def parse_action(
    fmt: Format, body: bytes | str = b"", headers: HeaderSource = ()
) -> ActionInvocation:
    """An action invocation; an empty one is an error (the route may treat an
    empty request as the ``?action=`` term with no parameters)."""
    if fmt is Format.JSON:
        obj = _object(_load_json(body), "action invocation", ("action", "attributes"))
        if "action" not in obj:
            raise _fail("action invocation: action is missing")
        action = _type_id(_string(obj["action"], "action"), "action")
        raw = _mapping(obj.get("attributes", {}), "action attributes")
        attributes: dict[str, AttributeValue] = {}
        for name, value in raw.items():
            if not ATTRIBUTE_NAME.fullmatch(name):
                raise _fail(f"action: {_short(name)} is not an attribute name")
            attributes[name] = _attribute_value(value, f"action attribute {name}")
        return ActionInvocation(action=action, attributes=attributes)
    return _action_from_fields(_fields(fmt, body, headers))


def parse_categories(
    fmt: Format, body: bytes | str = b"", headers: HeaderSource = ()
) -> list[CategoryRef]:
    """Categories: a query-interface filter (GFD.223 §7.1 says filters
    come as headers, so parse those with ``Format.TEXT_OCCI`` whatever the
    ``Accept``), or a whole query interface."""
    if fmt is Format.JSON:
        obj = _object(_load_json(body), "categories", ("kinds", "mixins", "actions"))
        out: list[CategoryRef] = []
        for key, cls in _JSON_CLASSES:
            items = obj.get(key, [])
            if not isinstance(items, list):
                raise _fail(f"{key} must be an array")
            out += [_category_from_json(item, cls) for item in items]
        return out
    refs: list[CategoryRef] = []
    for name, value in _fields(fmt, body, headers):
        if name != "Category":
            raise _fail(f"{name} does not belong in a category rendering")
        refs += [_category_item(item) for item in _items(value)]
    return refs


def parse_collection(
    fmt: Format, body: bytes | str = b"", headers: HeaderSource = ()
) -> Collection:
    """An entity collection: locations (text) or entities (JSON)."""
    if fmt is Format.JSON:
        obj = _object(_load_json(body), "collection", ("resources", "links"))
        entities: list[EntityRendering] = []
        for key in ("resources", "links"):
            items = obj.get(key, [])
            if not isinstance(items, list):
                raise _fail(f"{key} must be an array")
            entities += [_entity_from_json(item, key) for item in items]
        return Collection(entities=tuple(entities))
    locations: list[str] = []
    for name, value in _fields(fmt, body, headers):
        if name != "X-OCCI-Location":
            raise _fail(f"{name} does not belong in a collection rendering")
        locations += [_uri(item, "X-OCCI-Location") for item in _items(value)]
    return Collection(locations=tuple(locations))
