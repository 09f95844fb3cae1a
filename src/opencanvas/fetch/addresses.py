"""Refuse destinations that are not on the public internet (SSRF protection).

A URL in third-party metadata must not reach a cloud metadata endpoint
(169.254.169.254), a router, or a service on the fetching machine. Every
connection resolves the host, refuses it when *any* resolved address is not
globally routable (private, loopback, link-local, CGNAT, multicast, reserved),
looking inside IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4 2002::/16,
NAT64 64:ff9b::/96, Teredo), then connects to the address it checked, so a
second DNS answer (rebinding) cannot slip in between check and use.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable


class BlockedAddress(OSError):
    """The destination resolves to an address we refuse to contact."""


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are IPv4


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address routes to: 2002:7f00:1:: (6to4) reaches 127.0.0.1."""
    found = [a for a in (addr.ipv4_mapped, addr.sixtofour) if a is not None]
    if addr.teredo:
        found.extend(addr.teredo)  # (server, client)
    if addr in NAT64:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def blocked_reason(ip: str) -> str | None:
    """Why an address must not be contacted, or None when it is globally routable."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        for inner in embedded_ipv4(addr):
            why = _reason(inner)
            if why:
                return why
    return _reason(addr)


def _reason(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
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
