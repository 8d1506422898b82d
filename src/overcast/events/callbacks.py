"""Which callback URLs a user may give.

A callback is a request overcast makes on a user's behalf from inside the
cloud: pointed at loopback, link-local (the metadata services of other
clouds live there) or a private network, it would let a user reach what
only the cloud can. So by default a URL is refused when its host resolves
to any such address; the operator may allow them (``callback_private``),
and administrators' callbacks (a host reporting to its manager) are always
allowed.

The check runs when the URL is given and again before each delivery, as
the name may resolve elsewhere by then. (Between that check and the
connection a name could still change: pinning the address for the
connection is not done.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from overcast.model.errors import UsageError

__all__ = ["check_callback_url", "public_address"]


def public_address(address: str) -> bool:
    """Whether an address is one a callback may go to without the setting."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`UsageError` unless ``url`` is an http(s) URL with a
    host that resolves, and (unless ``allow_private``) only to public
    addresses."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UsageError(f"callback:exit: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("callback:exit: must be an http:// or https:// URL with a host")
    if allow_private:
        return
    host = parts.hostname
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except OSError as err:
        raise UsageError(f"callback:exit: cannot resolve {host}: {err}") from None
    for info in infos:
        address = str(info[4][0])
        if not public_address(address):
            raise UsageError(
                f"callback:exit: {host} resolves to {address}, which is not a public "
                "address; callbacks go only to public addresses"
            )
