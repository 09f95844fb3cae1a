"""Refuse destinations that are not on the public internet (SSRF protection).

A URL in third-party metadata must not reach a cloud metadata endpoint
(169.254.169.254), a router, or a service on the fetching machine. Every
connection resolves the host, refuses it when *any* resolved address is not
globally routable (private, loopback, link-local, CGNAT, multicast, reserved;
IPv4-mapped IPv6 included), then connects to the address it checked, so a
second DNS answer (rebinding) cannot slip in between check and use.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable


class BlockedAddress(OSError):
    """The destination resolves to an address we refuse to contact."""


def blocked_reason(ip: str) -> str | None:
    """Why an address must not be contacted, or None when it is globally routable."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"  # includes the 169.254.169.254 metadata service
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        return "reserved"
    if addr.is_private or not addr.is_global:
        return "private"
    return None


def guarded_connect(allow_private: bool) -> Callable[..., socket.socket]:
    """A `socket.create_connection` replacement that checks every resolved address first."""

    def create_connection(address: tuple[str, int], timeout: float | object = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
                          source_address: tuple[str, int] | None = None, **_: object) -> socket.socket:
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not allow_private:
            for *_info, sockaddr in infos:
                why = blocked_reason(str(sockaddr[0]))
                if why:
                    raise BlockedAddress(f"{why}-address: {host} resolves to {sockaddr[0]}")
        error: OSError | None = None
        for family, kind, proto, _canonname, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)  # type: ignore[arg-type]
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)  # the checked address, not a second lookup
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 does: small requests go now
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error or OSError(f"no address for {host}")

    return create_connection
