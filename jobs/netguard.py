"""Outbound requests to URLs chosen by clients (webhook targets, ``image_url``) must not reach inside our
network.

A URL is allowed when its scheme is http(s), its port is on the allow-list and the address we connect
to is global: not loopback, private, link-local (cloud metadata at 169.254.169.254), shared, multicast,
reserved, documentation, unspecified or any other special-purpose range. IPv6 forms that carry an IPv4
address are judged by it (IPv4-mapped) or refused outright (IPv4-compatible, NAT64, 6to4, Teredo: they
reach arbitrary IPv4 behind a translator or tunnel). The check runs where the connection is made
(`GuardedBackend.connect_tcp`, `GuardedAsyncBackend.connect_tcp`), on the very address the socket
connects to, so a hostname that resolves to a public address when checked and to a private one a
moment later (DNS rebinding) cannot slip through. TLS still verifies the certificate against the
hostname. httpcore is used directly: it never follows redirects on its own and never reads proxy
settings from the environment, both of which could route a request around the check (a caller that
follows redirects checks each target like the first: `api/image_fetch.py`).

A sync guarded pool also honours `deadline`: httpcore's timeouts bound each phase (connect, each read
and write), so an endpoint trickling its answer a byte at a time could otherwise hold a request open
for ever.

Refusals tell the client only that the URL is not allowed; what a name resolved to is logged here
(``url_refused``), never returned, so the guard cannot be used to map the inside of the network.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import socket
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpcore
import structlog

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = frozenset({80, 443})
SCHEME_PORTS = {"http": 80, "https": 443}
REFUSED_MESSAGE = "only public addresses may be called"
INVALID_HOST_MESSAGE = "the URL's host is not allowed: it is not a valid name or address"

# IPv6 ranges that lead to arbitrary IPv4 hosts through a translator or a tunnel.
_TUNNELS = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32")
)
# Special-purpose ranges that some Python versions still call global.
_SPECIAL = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "2001::/23",  # IETF protocol assignments
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing SIDs
        "fec0::/10",  # site-local (deprecated)
    )
)
# WHATWG URL's "ends in a number": such a host is an IPv4 address or invalid, never a DNS name.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0[xX][0-9a-fA-F]*)")
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # RFC 3986 3.1


class UnsafeURL(ValueError):
    """The URL may not be called: wrong scheme or port, credentials in it, or a non-public address."""


class Unresolvable(OSError):
    """The host did not resolve (possibly transient: try again later)."""


# -- addresses ------------------------------------------------------------------------------------


def is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a global unicast address outside every special-purpose range."""
    if isinstance(ip, ipaddress.IPv6Address):
        return _is_public_v6(ip)
    return _is_global(ip)


def _is_public_v6(ip: ipaddress.IPv6Address) -> bool:
    if ip.scope_id:  # a zone id: the address has link scope, whatever it looks like
        return False
    if ip.ipv4_mapped is not None:
        return is_public(ip.ipv4_mapped)
    if int(ip) >> 32 == 0:  # IPv4-compatible ::a.b.c.d (deprecated; also :: and ::1)
        return False
    if any(ip in net for net in _TUNNELS):
        return False
    return _is_global(ip)


def _is_global(ip: IPAddress) -> bool:
    special = (
        ip.is_private
        or ip.is_reserved
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or any(ip.version == net.version and ip in net for net in _SPECIAL)
    )
    return ip.is_global and not special


def _public_literal(address: str) -> bool:
    try:
        return is_public(ipaddress.ip_address(address))
    except ValueError:
        return False


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host denotes by itself, spelled as resolvers read it: IPv6 (a zone id
    included), dotted IPv4, and the legacy IPv4 forms (``127.1``, ``0177.0.0.1``, ``0x7f.1``,
    ``2130706433``). None for a DNS name. A host whose last label is a number but that is no valid
    IPv4 address raises `UnsafeURL`: no resolver treats it as a name."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(unquote(host))
        except ValueError:
            raise UnsafeURL(INVALID_HOST_MESSAGE) from None
    name = host[:-1] if host.endswith(".") else host
    if not _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        return None
    try:
        if not _LEGACY_IPV4.fullmatch(name):
            raise OSError(name)
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        raise UnsafeURL(INVALID_HOST_MESSAGE) from None


# -- ports ----------------------------------------------------------------------------------------


def port_allow_list(allowed_ports: Collection[int], allow_private: bool) -> frozenset[int] | None:
    """The ports a URL may use (None: any). An empty setting means 80 and 443, or any port while
    private URLs are allowed (local testing, where servers listen on random ports)."""
    if allowed_ports:
        return frozenset(allowed_ports)
    return None if allow_private else DEFAULT_PORTS


# -- the policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What a guarded connection may reach: ``allow_private`` lifts the address rule (tests, LANs);
    ``allowed_ports`` is the ``allowed_url_ports`` setting."""

    allow_private: bool = False
    allowed_ports: tuple[int, ...] = ()

    def check_port(self, port: int) -> None:
        ports = port_allow_list(self.allowed_ports, self.allow_private)
        if not 1 <= port <= 65535:  # `urlsplit` reads ":0" as port 0, which nothing listens on
            log.warning("url_refused", port=port, reason="port")
            raise UnsafeURL(f"port {port} is not a port (1-65535)")
        if ports is not None and port not in ports:
            log.warning("url_refused", port=port, reason="port")
            raise UnsafeURL(f"port {port} is not allowed")

    def check_literal(self, host: str) -> None:
        """Refuse a host that is itself a non-public address (no network needed)."""
        ip = literal_address(host)
        if ip is not None and not self.allow_private and not is_public(ip):
            log.warning("url_refused", host=host, address=str(ip), reason="literal")
            raise UnsafeURL(f"the URL's address is not allowed: {REFUSED_MESSAGE}")

    def usable(self, host: str, addresses: list[str]) -> list[str]:
        """The resolved addresses of ``host`` that may be connected to; `UnsafeURL` when none."""
        allowed = [a for a in addresses if self.allow_private or _public_literal(a)]
        if not allowed:
            log.warning("url_refused", host=host, addresses=addresses, reason="address")
            raise UnsafeURL(f"{host} is not allowed: {REFUSED_MESSAGE}")
        if len(allowed) < len(addresses):
            log.info("url_addresses_skipped", host=host, addresses=addresses, allowed=allowed)
        return allowed


def check_url_text(url: str) -> None:
    """Refuse a URL that no HTTP request line can carry: characters other than printable ASCII (a
    space, a control character, an unencoded non-ASCII letter or IDN host) must be percent-encoded."""
    if not (url.isascii() and url.isprintable()) or " " in url:
        raise UnsafeURL("the URL must be printable ASCII without spaces (percent-encode other characters)")


def lower_scheme(url: str) -> str:
    """``url`` with its scheme in lower case: schemes are case-insensitive (RFC 3986 3.1), and what is
    matched against ``https?://`` and stored is the canonical spelling. The guard's decisions do not
    change: it reads the scheme with `urlsplit`, which lowers it too."""
    scheme = _SCHEME.match(url)
    return url if scheme is None else scheme[0].lower() + url[scheme.end() :]


def check_url_syntax(url: str, allow_private: bool = False, allowed_ports: Collection[int] = ()) -> None:
    """What can be checked without the network: printable ASCII, http(s), a host, no user:password@,
    an allowed port, and no literal non-public address (unless `allow_private`)."""
    check_url_text(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("the URL is not valid") from None
    if parts.scheme not in SCHEME_PORTS or not parts.hostname:
        raise UnsafeURL("the URL must be http(s)://host/...")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("credentials in the URL are not allowed")
    policy = Policy(allow_private, tuple(allowed_ports))
    policy.check_port(SCHEME_PORTS[parts.scheme] if port is None else port)
    policy.check_literal(parts.hostname)


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[str]:
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Unresolvable(f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}") from e
    return _addresses(infos)


async def resolve_async(host: str, port: int) -> list[str]:
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Unresolvable(f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}") from e
    return _addresses(infos)


def describe_failure(e: BaseException) -> str:
    """A connection failure as told to clients: its kind and the OS's reason, never an address (the
    messages of some socket errors carry the peer's address)."""
    cause = e.__cause__
    reason = cause.strerror if isinstance(cause, OSError) else None
    return f"{type(e).__name__}: {reason}" if reason else type(e).__name__


# -- connection backends --------------------------------------------------------------------------

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("netguard_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Everything a sync guarded pool does inside the block (connecting, TLS, every read and write) ends
    within ``seconds`` in all; past it, the next step raises httpcore's timeout of that phase."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _within_deadline(timeout: float | None, error: type[httpcore.TimeoutException]) -> float | None:
    """A phase's timeout, cut to what is left of the current `deadline`."""
    end = _deadline.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the request's time limit is over")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every step honours `deadline` (also when reused for a later request)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _within_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _within_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _DeadlineStream:
        timeout = _within_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class GuardedBackend(httpcore.SyncBackend):
    """Connects only to allowed ports and public addresses (any address when `allow_private`),
    checked per connection on the address the socket connects to."""

    def __init__(self, allow_private: bool = False, allowed_ports: Collection[int] = ()) -> None:
        self.policy = Policy(allow_private, tuple(allowed_ports))

    def addresses_for(self, host: str, port: int) -> list[str]:
        """The addresses ``connect_tcp`` would try, in order; `UnsafeURL` when none may be used."""
        self.policy.check_port(port)
        self.policy.check_literal(host)
        return self.policy.usable(host, resolve(host, port))

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        *others, last = self.addresses_for(host, port)
        for address in others:
            try:
                return self._connect(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                continue  # e.g. an IPv6 address without a route: try the next one
        return self._connect(last, port, timeout, local_address, socket_options)

    def _connect(
        self,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.NetworkStream:
        timeout = _within_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(super().connect_tcp(address, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise UnsafeURL("unix sockets are not allowed")


class GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    """`GuardedBackend` for asyncio/anyio callers: resolves the host itself and hands only an allowed
    address to httpcore's anyio backend."""

    def __init__(self, allow_private: bool = False, allowed_ports: Collection[int] = ()) -> None:
        self.policy = Policy(allow_private, tuple(allowed_ports))
        self.inner = httpcore.AnyIOBackend()

    async def addresses_for(self, host: str, port: int) -> list[str]:
        """The addresses ``connect_tcp`` would try, in order; `UnsafeURL` when none may be used."""
        self.policy.check_port(port)
        self.policy.check_literal(host)
        return self.policy.usable(host, await resolve_async(host, port))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        *others, last = await self.addresses_for(host, port)
        for address in others:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                continue
        return await self.inner.connect_tcp(last, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeURL("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# -- pools ----------------------------------------------------------------------------------------


def timeouts(timeout_s: float) -> dict[str, float]:
    """httpcore's per-request timeout extension, the same limit for every phase."""
    return dict.fromkeys(("connect", "read", "write", "pool"), timeout_s)


def header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """httpcore's raw response headers as a dict with lower-case names."""
    return {k.decode().lower(): v.decode("latin-1") for k, v in headers}


def guarded_pool(allow_private: bool = False, allowed_ports: Collection[int] = ()) -> httpcore.ConnectionPool:
    """A connection pool for client-chosen URLs (no redirects, no env proxies, guarded connects)."""
    backend = GuardedBackend(allow_private, allowed_ports)
    return httpcore.ConnectionPool(network_backend=backend, max_connections=20)


def guarded_async_pool(
    allow_private: bool = False, allowed_ports: Collection[int] = ()
) -> httpcore.AsyncConnectionPool:
    """`guarded_pool` for async callers (the API: a fetch never holds a thread while it waits)."""
    backend = GuardedAsyncBackend(allow_private, allowed_ports)
    return httpcore.AsyncConnectionPool(network_backend=backend, max_connections=20)
