"""The OCCI 1.2 routes (GFD.223) on the same port and users as the
ElasticHosts API: parse the rendering, call a handler, render the answer.

- ``/-/`` and ``/.well-known/org/ogf/occi/-/``: the query interface, filtered
  by the request's ``Category`` fields. Read-only: overcast has no
  user-defined mixins (POST and DELETE are 405).
- ``/compute/``, ``/storage/``, ``/network/``, ``/storagelink/``,
  ``/networkinterface/``: GET lists (creation order), POST creates (201 with
  an absolute ``Location``) or, with ``?action=``, invokes the action on every
  entity that currently offers it, DELETE deletes every entity (but the
  public network).
- ``/<kind>/<id>``: GET, PUT (replace), POST (partial update, or an action
  with ``?action=``), DELETE (200).
- ``/resource/`` and ``/link/`` list (and create into) the union of their
  sub-kinds' collections; the mixin locations (``/ipnetwork/``,
  ``/os_tpl/<term>/``, ``/persistent/``, ...) list the entities that have
  the mixin. Mixins are chosen when an entity is created or updated, so
  associating through a mixin collection (POST, PUT, DELETE) is 405.

Every answer is in the rendering ``Accept`` asks for, named with exactly
the media type asked for; errors are plain text (see ``occi.http``).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import caller
from overcast.api.context import cloud_of
from overcast.api.occi.categories import (
    LINK,
    OS_TPL,
    OS_TPL_SCHEME,
    RESOURCE,
    Action,
    AttributeValue,
    Kind,
    Mixin,
    Registry,
    check_action,
    is_a,
)
from overcast.api.occi.compute import ComputeHandler
from overcast.api.occi.context import Ctx, Handler, check_entity, registry
from overcast.api.occi.http import (
    Forbidden,
    NotAllowed,
    answer_format,
    body_format,
    empty,
    occi_endpoint,
    read_body,
    reply,
    site_of,
)
from overcast.api.occi.links import NetworkInterfaceHandler, StorageLinkHandler
from overcast.api.occi.render import (
    EntityRendering,
    Format,
    parse_action,
    parse_categories,
    parse_entity,
    render_categories,
    render_collection,
    render_entity,
)
from overcast.api.occi.resources import NetworkHandler, StorageHandler
from overcast.model.errors import MissingError, UsageError

__all__ = ["HANDLERS", "routes"]

HANDLERS: tuple[Handler, ...] = (
    ComputeHandler(),
    StorageHandler(),
    NetworkHandler(),
    StorageLinkHandler(),
    NetworkInterfaceHandler(),
)
_READ = ("GET", "HEAD")
#: Every method a route takes, so that the handlers answer 405 themselves
#: (with ``Allow`` and an OCCI message) rather than the router.
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
_FILTER_FIELDS = ("category", "x-occi-category")
_OCCI_FIELDS = frozenset({*_FILTER_FIELDS, "x-occi-attribute"})


async def _ctx(request: Request) -> Ctx:
    return Ctx(cloud_of(request), await caller(request), site_of(request))


def _library(type_ids: Sequence[str]) -> bool:
    """Whether the ``os_tpl`` templates are needed to understand these."""
    return any(t == OS_TPL.id or t.startswith(OS_TPL_SCHEME) for t in type_ids)


def _requested(request: Request) -> list[str]:
    """The Category filter of a GET (GFD.223 §"Filtering"), from the headers
    whatever the rendering."""
    fields = [(k, v) for k, v in request.headers.items() if k.lower() in _FILTER_FIELDS]
    if not fields:
        return []
    return [ref.id for ref in parse_categories(Format.TEXT_OCCI, headers=fields)]


def _related(reg: Registry, entity: EntityRendering, wanted: set[str]) -> bool:
    kind = reg.kind(entity.kind)
    if kind is not None and any(is_a(kind, w) for w in wanted):
        return True
    for type_id in entity.mixins:
        mixin = reg.mixin(type_id)
        depends = {m.id for m in mixin.depends} if mixin is not None else set()
        if type_id.startswith(OS_TPL_SCHEME):
            depends.add(OS_TPL.id)  # a template whose library drive is gone
        if type_id in wanted or depends & wanted:
            return True
    return False


async def _filtered(
    ctx: Ctx, request: Request, entities: list[EntityRendering]
) -> list[EntityRendering]:
    wanted = set(_requested(request))
    if not wanted:
        return entities
    reg = await registry(ctx, library=_library(list(wanted)))
    return [e for e in entities if _related(reg, e, wanted)]


async def _entity_in(request: Request) -> EntityRendering:
    fmt = body_format(request)
    return parse_entity(fmt, await read_body(request), request.headers)


async def _invocation(request: Request, action: Action) -> dict[str, AttributeValue]:
    """The action's parameters, defaults filled in. An empty request is the
    ``?action=`` term with no parameters."""
    fmt = body_format(request)
    body = await read_body(request)
    if fmt is Format.TEXT_OCCI:
        given = any(k.lower() in _OCCI_FIELDS for k in request.headers)
    else:
        given = bool(body.strip())
    params: dict[str, AttributeValue] = {}
    if given:
        invocation = parse_action(fmt, body, request.headers)
        if invocation.action != action.id:
            raise UsageError(f"?action={action.term}, but the body invokes {invocation.action}")
        params = invocation.attributes
    problems = check_action(action, params)
    if problems:
        raise UsageError("; ".join(str(p) for p in problems))
    defaults = {a.name: a.default for a in action.attributes if a.default is not None}
    return {**defaults, **params}


def _action(handler: Handler, term: str) -> Action:
    for action in handler.kind.actions:
        if action.term == term:
            return action
    offered = ", ".join(a.term for a in handler.kind.actions) or "none"
    raise UsageError(f"{handler.collection} has no action {term[:40]!r} (its actions: {offered})")


async def _create(
    ctx: Ctx, handlers: Sequence[Handler], request: Request, fmt: Format, media: str
) -> Response:
    entity = await _entity_in(request)
    reg = await registry(ctx, library=_library(entity.mixins))
    kind = reg.kind(entity.kind)
    if kind is None:
        raise UsageError(f"unknown kind {entity.kind[:200]}")
    handler = next((h for h in handlers if h.kind is kind), None)
    if handler is None:
        where = ", ".join(f"/{h.collection}/" for h in handlers)
        raise UsageError(f"a {kind.term} cannot be created in {where}")
    mixins = check_entity(reg, kind, entity)
    created = await handler.create(ctx, entity, mixins)
    assert created.location is not None
    return reply(render_entity(created, fmt), media, 201, {"Location": created.location})


def _collection(kind: Kind, handlers: Sequence[Handler]) -> Route:
    """A kind's collection: ``handlers`` are its own (one) or its sub-kinds'."""
    single = handlers[0] if len(handlers) == 1 else None
    path = kind.location or ""
    allow = [*_READ, "POST", "DELETE"] if single else [*_READ, "POST"]

    @occi_endpoint
    async def endpoint(request: Request) -> Response:
        fmt, media = answer_format(request)
        ctx = await _ctx(request)
        method = request.method
        as_links = all(h.links for h in handlers)
        if method in _READ:
            entities = [e for h in handlers for e in await h.all(ctx)]
            entities = await _filtered(ctx, request, entities)
            return reply(render_collection(entities, fmt, links=as_links), media)
        if method == "POST" and "action" in request.query_params and single is not None:
            action = _action(single, request.query_params["action"])
            params = await _invocation(request, action)
            done = []
            for entity in await single.all(ctx):
                assert entity.id is not None
                if action.id in entity.actions:
                    done.append(await single.act(ctx, entity.id, action, params))
            return reply(render_collection(done, fmt, links=as_links), media)
        if method == "POST" and "action" not in request.query_params:
            return await _create(ctx, handlers, request, fmt, media)
        if method == "DELETE" and single is not None:
            for entity in await single.all(ctx):
                assert entity.id is not None
                try:
                    await single.delete(ctx, entity.id)
                except (Forbidden, MissingError):
                    continue  # the public network; a compute that ended meanwhile
            return reply(empty(fmt), media)
        raise NotAllowed(f"{method} {path}: not on this collection", allow)

    return Route(path, endpoint, methods=_METHODS)


def _entity(handler: Handler) -> Route:
    allow = [*_READ, "PUT", "POST", "DELETE"]

    @occi_endpoint
    async def endpoint(request: Request) -> Response:
        fmt, media = answer_format(request)
        ctx = await _ctx(request)
        ident = request.path_params["id"]
        method = request.method
        if method in _READ:
            return reply(render_entity(await handler.one(ctx, ident), fmt), media)
        if method == "DELETE":
            await handler.delete(ctx, ident)
            return reply(empty(fmt), media)
        if method == "POST" and "action" in request.query_params:
            action = _action(handler, request.query_params["action"])
            params = await _invocation(request, action)
            return reply(render_entity(await handler.act(ctx, ident, action, params), fmt), media)
        if method in ("PUT", "POST"):
            entity = await _entity_in(request)
            current = await handler.one(ctx, ident)
            reg = await registry(ctx, library=_library(entity.mixins))
            mixins = check_entity(reg, handler.kind, entity, current=current.attributes)
            updated = await handler.update(ctx, ident, entity, mixins, replace=method == "PUT")
            return reply(render_entity(updated, fmt), media)
        raise NotAllowed(f"{method} {request.url.path}: not on an entity", allow)

    return Route(f"/{handler.collection}/{{id}}", endpoint, methods=_METHODS)


@occi_endpoint
async def _query(request: Request) -> Response:
    fmt, media = answer_format(request)
    if request.method not in _READ:
        raise NotAllowed(
            f"{request.method} {request.url.path}: overcast has no user-defined mixins", _READ
        )
    ctx = await _ctx(request)
    reg = await registry(ctx, library=True)
    wanted = _requested(request)
    categories = reg.filter(wanted) if wanted else list(reg.categories)
    return reply(render_categories(categories, fmt), media)


@occi_endpoint
async def _mixin_collection(request: Request) -> Response:
    """The entities that have a mixin (or a template depending on it)."""
    fmt, media = answer_format(request)
    ctx = await _ctx(request)
    path = request.url.path
    reg = await registry(ctx, library=path.startswith(OS_TPL.location or "/os_tpl/"))
    mixin = reg.at(path)
    if not isinstance(mixin, Mixin):
        raise MissingError(f"no collection {path[:120]}")
    if request.method not in _READ:
        raise NotAllowed(
            f"{request.method} {path}: mixins are chosen when an entity is created or updated",
            _READ,
        )
    handlers = [h for h in HANDLERS if any(is_a(h.kind, k.id) for k in mixin.applies)]
    entities = [e for h in handlers for e in await h.all(ctx)]
    entities = [e for e in entities if _related(reg, e, {mixin.id})]
    entities = await _filtered(ctx, request, entities)
    as_links = bool(handlers) and all(h.links for h in handlers)
    return reply(render_collection(entities, fmt, links=as_links), media)


_MIXIN_PATHS = (
    "/ipnetwork/",
    "/ipnetworkinterface/",
    "/os_tpl/",
    "/os_tpl/{term}/",
    "/resource_tpl/",
    "/resource_tpl/{term}/",
    "/persistent/",
)

routes = [
    Route("/-/", _query, methods=_METHODS),
    Route("/.well-known/org/ogf/occi/-/", _query, methods=_METHODS),
    *(_collection(h.kind, [h]) for h in HANDLERS),
    *(_entity(h) for h in HANDLERS),
    _collection(RESOURCE, [h for h in HANDLERS if not h.links]),
    _collection(LINK, [h for h in HANDLERS if h.links]),
    *(Route(path, _mixin_collection, methods=_METHODS) for path in _MIXIN_PATHS),
]
