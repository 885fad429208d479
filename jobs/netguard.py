"""Outbound requests to URLs chosen by clients (webhook targets) must not reach inside our network.

A URL is allowed when its scheme is http(s) and the address we connect to is public: not loopback,
private, link-local (cloud metadata at 169.254.169.254), shared, multicast, reserved or unspecified.
The check runs where the connection is made (`GuardedBackend.connect_tcp`), on the very address the
socket connects to, so a hostname that resolves to a public address when checked and to a private
one a moment later (DNS rebinding) cannot slip through. TLS still verifies the certificate against
the hostname. httpcore is used directly: it never follows redirects on its own and never reads proxy
settings from the environment, both of which could route a request around the check (a caller that
follows redirects checks each target like the first: `api/image_fetch.py`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore


class UnsafeURL(ValueError):
    """The URL may not be called: wrong scheme, credentials in it, or a non-public address."""


class Unresolvable(OSError):
    """The host did not resolve (possibly transient: try again later)."""


def check_url_syntax(url: str, allow_private: bool = False) -> None:
    """What can be checked without the network: http(s), a host, no user:password@, and no literal
    non-public address (unless `allow_private`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL("the URL must be http(s)://host/...")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("credentials in the URL are not allowed")
    if allow_private:
        return
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    if not is_public(ip):
        raise UnsafeURL(f"{ip} is not a public address")


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _public_literal(address: str) -> bool:
    return is_public(ipaddress.ip_address(address.split("%")[0]))  # drop an IPv6 zone id


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Unresolvable(f"cannot resolve {host}: {e.strerror}") from e
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.SyncBackend):
    """Connects only to public addresses (or to any, when `allow_private`), checked per connection."""

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port)
        allowed = [a for a in addresses if self.allow_private or _public_literal(a)]
        if not allowed:
            raise UnsafeURL(f"{host} resolves to non-public addresses only ({', '.join(addresses)})")
        return super().connect_tcp(allowed[0], port, timeout, local_address, socket_options)


def timeouts(timeout_s: float) -> dict[str, float]:
    """httpcore's per-request timeout extension, the same limit for every phase."""
    return dict.fromkeys(("connect", "read", "write", "pool"), timeout_s)


def header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """httpcore's raw response headers as a dict with lower-case names."""
    return {k.decode().lower(): v.decode("latin-1") for k, v in headers}


def guarded_pool(allow_private: bool = False) -> httpcore.ConnectionPool:
    """A connection pool for client-chosen URLs (no redirects, no env proxies, guarded connects)."""
    return httpcore.ConnectionPool(network_backend=GuardedBackend(allow_private), max_connections=20)
