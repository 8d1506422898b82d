"""What every OCCI handler shares: the caller's context, the handler shape,
the registry of categories, and the checks of a rendering against it.

A handler (one per kind: ``compute``, ``storage``, ``network``,
``storagelink``, ``networkinterface``) turns checked renderings into service
calls and service results into renderings; the routes do the HTTP around it.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from overcast.api.occi.categories import (
    Action,
    AttributeValue,
    Kind,
    Mixin,
    Registry,
    check_attributes,
    check_mixins,
    os_template,
    query_interface,
)
from overcast.api.occi.http import NotSupported
from overcast.api.occi.mapping import PERSISTENT, RESOURCE_TEMPLATES, Site
from overcast.api.occi.render import EntityRendering
from overcast.cluster.cloud import Cloud
from overcast.model.drive import Media
from overcast.model.errors import MissingError, UsageError
from overcast.model.user import User

__all__ = [
    "STATIC",
    "Ctx",
    "Handler",
    "check_entity",
    "registry",
    "resolve_mixins",
    "uuid_or_missing",
]

#: The categories that do not depend on the library (every template but
#: the ``os_tpl`` ones): built once.
STATIC = Registry(query_interface((), RESOURCE_TEMPLATES, (PERSISTENT,)))
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Ctx:
    """One request's caller, cloud and site."""

    cloud: Cloud
    user: User
    site: Site


async def registry(ctx: Ctx, *, library: bool) -> Registry:
    """The query interface's categories; with ``library``, one ``os_tpl``
    per disk image in the library (a listing of the store, so only when the
    request needs them)."""
    if not library:
        return STATIC
    templates = [
        os_template(d.uuid, d.name)
        for d in await ctx.cloud.drives.list_standard()
        if d.media is not Media.CDROM
    ]
    return Registry(query_interface(templates, RESOURCE_TEMPLATES, (PERSISTENT,)))


def uuid_or_missing(ident: str, what: str) -> str:
    """An entity id that cannot be a UUID names nothing: 404, not 400."""
    if not _UUID.fullmatch(ident):
        raise MissingError(f"no {what} {ident[:80]}")
    return ident.lower()


def resolve_mixins(reg: Registry, ids: Iterable[str]) -> list[Mixin]:
    mixins = []
    for type_id in ids:
        mixin = reg.mixin(type_id)
        if mixin is None:
            raise UsageError(f"unknown mixin {type_id[:200]}")
        mixins.append(mixin)
    return mixins


def check_entity(
    reg: Registry,
    kind: Kind,
    entity: EntityRendering,
    *,
    current: Mapping[str, AttributeValue] | None = None,
    extra: Mapping[str, AttributeValue] | None = None,
) -> list[Mixin]:
    """The rendering's mixins, once its kind, mixins and attributes passed
    the checks against the definitions; every problem in one message.

    ``current`` (an update): immutable attributes must keep these values.
    ``extra``: attributes added before the check (an inline link's source).
    """
    if entity.kind != kind.id:
        if reg.kind(entity.kind) is None:
            raise UsageError(f"unknown kind {entity.kind[:200]}")
        raise UsageError(f"{entity.kind} is not {kind.id}")
    mixins = resolve_mixins(reg, entity.mixins)
    attributes = {**(extra or {}), **entity.attributes}
    problems = check_mixins(kind, mixins) + check_attributes(
        kind, mixins, attributes, creating=current is None, current=current
    )
    if problems:
        raise UsageError("; ".join(str(p) for p in problems))
    return mixins


class Handler(abc.ABC):
    """The entities of one kind, as OCCI sees them."""

    kind: ClassVar[Kind]
    #: The collection's path segment (``compute`` for ``/compute/``).
    collection: ClassVar[str]
    #: Whether JSON lists these under ``links`` (GFD.226) rather than ``resources``.
    links: ClassVar[bool] = False

    @abc.abstractmethod
    async def all(self, ctx: Ctx) -> list[EntityRendering]:
        """Every entity of the caller's, in creation order."""

    @abc.abstractmethod
    async def one(self, ctx: Ctx, ident: str) -> EntityRendering: ...

    @abc.abstractmethod
    async def create(
        self, ctx: Ctx, entity: EntityRendering, mixins: list[Mixin]
    ) -> EntityRendering: ...

    @abc.abstractmethod
    async def update(
        self,
        ctx: Ctx,
        ident: str,
        entity: EntityRendering,
        mixins: list[Mixin],
        *,
        replace: bool,
    ) -> EntityRendering: ...

    @abc.abstractmethod
    async def delete(self, ctx: Ctx, ident: str) -> None: ...

    async def act(
        self, ctx: Ctx, ident: str, action: Action, params: Mapping[str, AttributeValue]
    ) -> EntityRendering:
        """Kinds without actions never get here (the routes refuse first)."""
        raise NotSupported(f"{self.collection} has no action {action.term}")
