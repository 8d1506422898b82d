"""etcd through its JSON gateway: leases, keys, one-winner transactions, watches.

DESIGN.md puts what must be linearizable across machines in etcd: host
leases, guest ownership (a guest's key *is* the right to run it) and the
manager election. This is the small part of etcd's v3 API that needs, over
the gRPC gateway every etcd since 3.4 serves at ``/v3/…``, with httpx:
no gRPC stack to build, and the same client on hosts and managers.

Several endpoints may be given: a request that cannot reach one (refused,
timed out) goes to the next, so a client rides out the loss of a member
while the quorum lives. An answer from etcd (even an error) is final.

Keys and values are text here and base64 on the wire, as the gateway
wants. Numbers that etcd sends as strings (revisions, lease ids, TTLs)
come back as ints.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

__all__ = ["Etcd", "EtcdError", "KeyValue", "LeaseLost", "WatchEvent", "prefix_end"]


class EtcdError(Exception):
    """etcd could not be reached, or refused the request."""


class LeaseLost(EtcdError):
    """The lease expired or was revoked: its keys are gone."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(data: str | None) -> str:
    return base64.b64decode(data).decode() if data else ""


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with
    ``prefix``: the prefix with its last character incremented. Prefixes are
    ASCII (ours are paths like ``overcast/guests/``)."""
    if not prefix or not prefix.isascii() or prefix[-1] == "\x7f":
        raise ValueError(f"etcd: prefix {prefix!r} must be ASCII, not ending in DEL")
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _kv(data: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=_text(data.get("key")),
        value=_text(data.get("value")),
        create_revision=int(data.get("create_revision", 0)),
        mod_revision=int(data.get("mod_revision", 0)),
        lease=int(data.get("lease", 0)),
    )


class Etcd:
    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._client = httpx.AsyncClient(timeout=timeout)
        self._watch_client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, read=None))

    async def close(self) -> None:
        await self._client.aclose()
        await self._watch_client.aclose()

    async def _call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        errors = []
        for endpoint in self._endpoints:
            try:
                response = await self._client.post(endpoint + path, json=body)
            except httpx.TransportError as err:
                errors.append(f"{endpoint}: {type(err).__name__}")
                continue
            data = response.json()
            if response.is_error or "error" in data:
                raise EtcdError(f"etcd {path}: {data.get('message') or data.get('error')}")
            result: dict[str, Any] = data.get("result", data)
            return result
        raise EtcdError(f"etcd {path}: no endpoint answered ({'; '.join(errors)})")

    # -- leases ------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return int((await self._call("/v3/lease/grant", {"TTL": ttl}))["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew the lease once; its TTL again. :class:`LeaseLost` if it is gone."""
        result = await self._call("/v3/lease/keepalive", {"ID": lease})
        ttl = int(result.get("TTL", 0))
        if ttl <= 0:
            raise LeaseLost(f"lease {lease:x} has expired")
        return ttl

    async def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys."""
        await self._call("/v3/lease/revoke", {"ID": lease})

    # -- keys --------------------------------------------------------------

    async def put(self, key: str, value: str, *, lease: int = 0) -> int:
        """Set ``key``; the store's revision after it."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int((await self._call("/v3/kv/put", body))["header"]["revision"])

    async def get(self, key: str) -> KeyValue | None:
        kvs = (await self._call("/v3/kv/range", {"key": _b64(key)})).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (in key order) and the revision read at,
        from which a watch can continue without missing a change."""
        result = await self._call(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        )
        return [_kv(kv) for kv in result.get("kvs", [])], int(result["header"]["revision"])

    async def delete(self, key: str) -> int:
        """Delete ``key``; how many keys went (0 or 1)."""
        return int((await self._call("/v3/kv/deleterange", {"key": _b64(key)})).get("deleted", 0))

    async def put_if_absent(self, key: str, value: str, *, lease: int = 0) -> bool:
        """Create ``key`` only if no such key exists, atomically: of many
        callers racing for one key, exactly one gets True."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        body = {
            "compare": [
                {
                    "key": _b64(key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": "0",
                }
            ],
            "success": [{"request_put": put}],
        }
        return bool((await self._call("/v3/kv/txn", body)).get("succeeded", False))

    async def delete_if(self, key: str, value: str) -> bool:
        """Delete ``key`` only if it holds ``value`` (ownership checked and
        given up in one step)."""
        body = {
            "compare": [
                {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}
            ],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        }
        return bool((await self._call("/v3/kv/txn", body)).get("succeeded", False))

    # -- watches -----------------------------------------------------------

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` on, as it
        happens; ends (raising :class:`EtcdError`) when the stream breaks, for
        the caller to read again and watch from where it got to."""
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "start_revision": start_revision,
            }
        }
        for endpoint in self._endpoints:
            try:
                async with self._watch_client.stream(
                    "POST", endpoint + "/v3/watch", json=body
                ) as response:
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        result = json.loads(line).get("result", {})
                        for event in result.get("events", []):
                            kind: Literal["put", "delete"] = (
                                "delete" if event.get("type") == "DELETE" else "put"
                            )
                            yield WatchEvent(kind, _kv(event["kv"]))
                        if result.get("canceled"):
                            raise EtcdError(f"etcd watch canceled: {result.get('cancel_reason')}")
            except httpx.TransportError:
                continue
            raise EtcdError("etcd watch ended")
        raise EtcdError("etcd watch: no endpoint answered")
