"""A :class:`RunningGuest` as JSON: how a host agent's view crosses the wire.

A manager that reaches a host over HTTP (:mod:`overcast.host.remote`) must
see exactly what the host's agent sees (QEMU's run state, device ids, I/O
counters, the VNC address the host chose), so both ends use this one codec:
the host's privileged ``/guests/S/info`` encodes, ``RemoteHost`` decodes.

The document is ``{"info": {GuestInfo fields, "disks": [DiskStats...],
"nics": [NicStats...]}, "vnc": {"ip", "port"} | null}``. Decoding checks
every field's type: a host that sends anything else is a
:class:`~overcast.model.errors.FailedError` (the host failed), never a
half-built guest.

Not here: the HTTP calls (:mod:`overcast.host.remote`), the route
(:mod:`overcast.api.guests`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from overcast.host.agent import RunningGuest, VncAddress
from overcast.hypervisor.spec import DiskStats, GuestInfo, NicStats
from overcast.model.errors import FailedError

__all__ = ["decode_running_guest", "encode_running_guest"]


def encode_running_guest(guest: RunningGuest) -> dict[str, object]:
    """``guest`` as a JSON-ready document (tuples become lists)."""
    return {
        "info": dataclasses.asdict(guest.info),
        "vnc": dataclasses.asdict(guest.vnc) if guest.vnc is not None else None,
    }


def decode_running_guest(document: object) -> RunningGuest:
    """The guest :func:`encode_running_guest` wrote; :class:`FailedError`
    naming the first field that is missing or of the wrong type."""
    top = _object(document, "guest")
    info = _object(top.get("info"), "info")
    vnc = top.get("vnc")
    return RunningGuest(
        info=GuestInfo(
            uuid=_str(info, "uuid"),
            name=_str(info, "name"),
            pid=_int(info, "pid"),
            status=_str(info, "status"),
            running=_bool(info, "running"),
            disks=tuple(_disk(d) for d in _list(info, "disks")),
            nics=tuple(_nic(n) for n in _list(info, "nics")),
        ),
        vnc=None if vnc is None else _vnc(_object(vnc, "vnc")),
    )


def _disk(value: object) -> DiskStats:
    d = _object(value, "disks[]")
    return DiskStats(
        device=_str(d, "device"),
        image=_str(d, "image"),
        readonly=_bool(d, "readonly"),
        read_bytes=_int(d, "read_bytes"),
        write_bytes=_int(d, "write_bytes"),
        read_requests=_int(d, "read_requests"),
        write_requests=_int(d, "write_requests"),
    )


def _nic(value: object) -> NicStats:
    n = _object(value, "nics[]")
    return NicStats(
        device=_str(n, "device"),
        model=_str(n, "model"),
        mac=_str(n, "mac"),
        tap=_optional_str(n, "tap"),
        rx_bytes=_optional_int(n, "rx_bytes"),
        tx_bytes=_optional_int(n, "tx_bytes"),
        rx_packets=_optional_int(n, "rx_packets"),
        tx_packets=_optional_int(n, "tx_packets"),
    )


def _vnc(v: Mapping[str, object]) -> VncAddress:
    return VncAddress(ip=_str(v, "ip"), port=_int(v, "port"))


def _bad(field: str, want: str) -> FailedError:
    return FailedError(f"the host sent a malformed guest: {field} is not {want}")


def _object(value: object, field: str) -> Mapping[str, object]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _bad(field, "an object")
    return value


def _list(data: Mapping[str, object], field: str) -> list[object]:
    value = data.get(field)
    if not isinstance(value, list):
        raise _bad(field, "a list")
    return value


def _str(data: Mapping[str, object], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        raise _bad(field, "a string")
    return value


def _int(data: Mapping[str, object], field: str) -> int:
    value = data.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(field, "an integer")
    return value


def _bool(data: Mapping[str, object], field: str) -> bool:
    value = data.get(field)
    if not isinstance(value, bool):
        raise _bad(field, "true or false")
    return value


def _optional_str(data: Mapping[str, object], field: str) -> str | None:
    return None if data.get(field) is None else _str(data, field)


def _optional_int(data: Mapping[str, object], field: str) -> int | None:
    return None if data.get(field) is None else _int(data, field)
