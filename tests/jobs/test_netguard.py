"""The outbound address guard (`jobs/netguard.py`): which URLs and addresses client-chosen requests may
reach. Decisions are asserted on directly; names are resolved by a fake resolver, so no DNS query and no
connection leaves the machine (the only connections made go to a server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from jobs import netguard
from jobs.netguard import (
    GuardedAsyncBackend,
    GuardedBackend,
    UnsafeURL,
    check_url_syntax,
    is_public,
    literal_address,
    port_allow_list,
)
from tests.conftest import LocalHTTPServer

# What the fake resolver answers for each name (getaddrinfo's spelling: a zone id stays on the address).
DNS: dict[str, list[str]] = {
    "localhost": ["127.0.0.1", "::1"],
    "localhost.": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    "metadata.google.internal.": ["169.254.169.254"],
    "intranet.example": ["10.1.2.3"],
    "printer.example": ["192.168.1.20"],
    "carrier.example": ["100.64.0.7"],
    "v6-loopback.example": ["::1"],
    "v6-mapped.example": ["::ffff:10.0.0.1"],
    "v6-compat.example": ["::a9fe:a9fe"],
    "v6-nat64.example": ["64:ff9b::a9fe:a9fe"],
    "v6-6to4.example": ["2002:a00:1::1"],
    "v6-teredo.example": ["2001:0:4136:e378:8000:63bf:3fff:fdd2"],
    "v6-ula.example": ["fd12:3456::1"],
    "v6-link.example": ["fe80::1%eth0"],
    "all-private.example": ["10.0.0.1", "fd00::1", "127.0.0.1"],
    # public
    "dns.google": ["8.8.8.8", "2001:4860:4860::8888"],
    "dns.google.": ["8.8.8.8"],
    "one.one.example": ["2606:4700::1111"],
    "split.example": ["10.0.0.1", "93.184.215.14"],  # one inside, one outside: only the outside is used
}

REFUSED = [
    # loopback, in every spelling resolvers accept
    "http://127.0.0.1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0X7F.0.0.1/",
    "http://127.0.0.1./",
    "https://127.0.0.2:443/",
    # unspecified, private, link-local (cloud metadata), shared, multicast, broadcast, special-purpose
    "http://0.0.0.0/",
    "http://0/",
    "http://10.0.0.1/",
    "http://012.0.0.1/",
    "http://167772161/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://3232235777/",
    "http://169.254.169.254/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://2852039166/",
    "http://169.254.43518/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.0.1/",
    "http://192.0.2.1/",
    "http://192.88.99.1/",
    "http://198.18.0.1/",
    "http://240.0.0.1/",
    # numbers that are no IPv4 address: resolvers never read them as names
    "http://1.2.3.999/",
    "http://4294967296/",
    "http://example.0x10/",
    # IPv6, and IPv6 carrying IPv4
    "http://[::1]/",
    "http://[::]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[::8.8.8.8]/",  # IPv4-compatible: deprecated, refused whatever it embeds
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::8.8.8.8]/",  # NAT64 reaches any IPv4 behind the translator
    "http://[64:ff9b:1::a00:1]/",
    "http://[2002:7f00:1::1]/",
    "http://[2002:808:808::1]/",  # 6to4
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[2606:4700::1111%25eth0]/",  # a zone id has no meaning on a global address
    "http://[fd00::1]/",
    "http://[fc00::1]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[2001:db8::1]/",
    "http://[100::1]/",
    "http://[3fff::1]/",
    "http://[5f00::1]/",
    # names that resolve inside
    *(f"http://{name}/" for name in list(DNS)[: list(DNS).index("dns.google")]),
    "http://LocalHost/",
]

ALLOWED = {
    "http://8.8.8.8/": ["8.8.8.8"],
    "https://1.1.1.1/": ["1.1.1.1"],
    "http://134744072/": ["8.8.8.8"],  # a public address in a legacy spelling is still that address
    "http://[2606:4700::1111]/": ["2606:4700::1111"],
    "http://[2001:4860:4860::8888]:443/": ["2001:4860:4860::8888"],
    "http://[::ffff:8.8.8.8]/": [str(ipaddress.ip_address("::ffff:8.8.8.8"))],
    "https://dns.google/": ["8.8.8.8", "2001:4860:4860::8888"],
    "https://dns.google./": ["8.8.8.8"],
    "http://one.one.example/": ["2606:4700::1111"],
    "http://split.example/": ["93.184.215.14"],
}


def _fake_getaddrinfo(host: str, port: int) -> list[str]:
    """getaddrinfo's answer for ``host``: a literal stands for itself (in its canonical spelling)."""
    if host.lower() in DNS:
        return DNS[host.lower()]
    ip = literal_address(host)
    assert ip is not None, f"the test resolved an unknown name {host}"
    return [str(ip)]


async def _fake_getaddrinfo_async(host: str, port: int) -> list[str]:
    return _fake_getaddrinfo(host, port)


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "resolve", _fake_getaddrinfo)
    monkeypatch.setattr(netguard, "resolve_async", _fake_getaddrinfo_async)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _sync_decision(url: str, **policy: object) -> list[str]:
    check_url_syntax(url, **policy)  # type: ignore[arg-type]
    return GuardedBackend(**policy).addresses_for(*_host_port(url))  # type: ignore[arg-type]


def _async_decision(url: str, **policy: object) -> list[str]:
    check_url_syntax(url, **policy)  # type: ignore[arg-type]
    return asyncio.run(GuardedAsyncBackend(**policy).addresses_for(*_host_port(url)))  # type: ignore[arg-type]


DECIDERS: dict[str, Callable[..., list[str]]] = {"sync": _sync_decision, "async": _async_decision}


@pytest.fixture(params=list(DECIDERS))
def decide(request: pytest.FixtureRequest) -> Callable[..., list[str]]:
    """The guard's decision for a URL, as the webhook worker (sync) or the API (async) makes it:
    the addresses it would connect to, or `UnsafeURL`."""
    return DECIDERS[request.param]


# -- addresses ------------------------------------------------------------------------------------


def test_the_table_is_large_enough() -> None:
    assert len(REFUSED) >= 30 and len(ALLOWED) >= 5


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_destinations_are_refused_without_saying_where_they_lead(
    decide: Callable[..., list[str]], url: str
) -> None:
    host, _ = _host_port(url)
    with pytest.raises(UnsafeURL) as refused:
        decide(url)
    message = str(refused.value)
    assert "not allowed" in message
    for address in DNS.get(host.lower(), []):
        assert address not in message and address.split("%")[0] not in message


@pytest.mark.parametrize(("url", "addresses"), list(ALLOWED.items()))
def test_public_destinations_are_allowed(
    decide: Callable[..., list[str]], url: str, addresses: list[str]
) -> None:
    assert decide(url) == addresses


def test_private_destinations_are_allowed_when_the_deployment_says_so(
    decide: Callable[..., list[str]],
) -> None:
    assert decide("http://localhost:8000/", allow_private=True) == ["127.0.0.1", "::1"]
    assert decide("http://127.1:6379/", allow_private=True) == ["127.0.0.1"]
    with pytest.raises(UnsafeURL, match="not allowed"):  # still no number that is no address
        decide("http://1.2.3.999/", allow_private=True)


def test_a_refusal_is_logged_with_what_the_name_resolved_to(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="jobs.netguard"), pytest.raises(UnsafeURL):
        _sync_decision("http://metadata.google.internal/")
    events = [
        r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "url_refused"
    ]
    assert events and events[0]["host"] == "metadata.google.internal"
    assert events[0]["addresses"] == ["169.254.169.254"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("::ffff:127.0.0.1", False),
        ("::8.8.8.8", False),
        ("64:ff9b::808:808", False),
        ("2002:808:808::1", False),
        ("2001::1", False),
        ("fe80::1%eth0", False),
        ("224.0.0.1", False),
        ("ff0e::1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


# -- ports ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "allow_private", "expected"),
    [
        ([], False, frozenset({80, 443})),
        ([], True, None),  # any port: local testing
        ([8443], False, frozenset({8443})),
        ([443], True, frozenset({443})),
    ],
)
def test_port_allow_list(configured: list[int], allow_private: bool, expected: frozenset[int] | None) -> None:
    assert port_allow_list(configured, allow_private) == expected


@pytest.mark.parametrize(
    ("url", "policy", "allowed"),
    [
        ("http://8.8.8.8/", {}, True),
        ("https://8.8.8.8/", {}, True),
        ("http://8.8.8.8:443/", {}, True),
        ("http://8.8.8.8:8080/", {}, False),
        ("https://dns.google:22/", {}, False),
        ("http://8.8.8.8:6379/", {"allow_private": True}, True),
        ("http://8.8.8.8:6379/", {"allow_private": True, "allowed_ports": [443]}, False),
        ("https://8.8.8.8:8443/", {"allowed_ports": [8443]}, True),
        ("https://8.8.8.8/", {"allowed_ports": [8443]}, False),
        ("http://8.8.8.8:99999/", {"allow_private": True}, False),
        ("http://8.8.8.8:0/", {}, False),
        ("http://8.8.8.8:0/", {"allow_private": True}, False),  # was allowed: any port meant 0 too
    ],
)
def test_port_decisions(
    decide: Callable[..., list[str]], url: str, policy: dict[str, object], allowed: bool
) -> None:
    if allowed:
        assert decide(url, **policy) == ["8.8.8.8"]
    else:
        with pytest.raises(UnsafeURL, match="not allowed|not valid|not a port"):
            decide(url, **policy)


def test_the_backends_check_the_port_they_connect_to() -> None:
    # A redirect or a caller that skipped check_url_syntax still meets the allow-list at connect.
    with pytest.raises(UnsafeURL, match="port 25 is not allowed"):
        GuardedBackend().addresses_for("dns.google", 25)
    with pytest.raises(UnsafeURL, match="port 25 is not allowed"):
        asyncio.run(GuardedAsyncBackend().addresses_for("dns.google", 25))


@pytest.mark.parametrize(
    "url",
    ["ftp://8.8.8.8/", "file:///etc/passwd", "http://user:pw@8.8.8.8/", "http:///nohost", "http://[::1/"],
)
def test_other_schemes_credentials_and_missing_hosts_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url_syntax(url)


@pytest.mark.parametrize(
    ("url", "lowered"),
    [
        ("HTTP://127.0.0.1:9/h", "http://127.0.0.1:9/h"),
        ("HtTpS://Example.COM/A", "https://Example.COM/A"),  # only the scheme
        ("http://8.8.8.8/", "http://8.8.8.8/"),
        ("8.8.8.8/HTTP:", "8.8.8.8/HTTP:"),  # no scheme: unchanged
        ("", ""),
    ],
)
def test_lower_scheme_lowers_the_scheme_alone(url: str, lowered: str) -> None:
    assert netguard.lower_scheme(url) == lowered


def _outcome(decide: Callable[..., list[str]], url: str) -> list[str] | str:
    try:
        return decide(url)
    except UnsafeURL as e:
        return str(e)


@pytest.mark.parametrize("url", [*REFUSED, *ALLOWED])
def test_an_upper_case_scheme_changes_no_decision(decide: Callable[..., list[str]], url: str) -> None:
    scheme, rest = url.split(":", 1)
    upper = f"{scheme.upper()}:{rest}"
    assert netguard.lower_scheme(upper) == url
    assert _outcome(decide, upper) == _outcome(decide, url)


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/caf\u00e9.png",
        "http://b\u00fccher.example/",
        "http://8.8.8.8/a b",
        "http://8.8.8.8/a\r\nX: 1",
    ],
)
def test_urls_that_are_not_printable_ascii_are_refused(url: str) -> None:
    # No HTTP request line can carry them (httpcore raises TypeError on a non-ASCII URL): refused when
    # submitted, not found out by a worker later. Other characters must be percent-encoded.
    with pytest.raises(UnsafeURL, match="ASCII"):
        check_url_syntax(url, allow_private=True)


# -- at connect -----------------------------------------------------------------------------------


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHTTPServer]:
    """A server on 127.0.0.1 that the guard takes for public (the one place these tests connect)."""
    monkeypatch.setattr(netguard, "is_public", lambda ip: str(ip) == "127.0.0.1")
    server = LocalHTTPServer()
    yield server
    server.close()


def _rebinding(monkeypatch: pytest.MonkeyPatch, answers: list[list[str]]) -> None:
    """The name ``rebind.example`` answers each lookup with the next of ``answers``."""

    def resolve(host: str, port: int) -> list[str]:
        assert host == "rebind.example"
        return answers.pop(0)

    async def resolve_async(host: str, port: int) -> list[str]:
        return resolve(host, port)

    monkeypatch.setattr(netguard, "resolve", resolve)
    monkeypatch.setattr(netguard, "resolve_async", resolve_async)


def test_every_connect_resolves_and_checks_again(
    loopback_is_public: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a name that first resolves to an allowed address, then to the metadata service
    port = int(loopback_is_public.base.rsplit(":", 1)[1])
    _rebinding(monkeypatch, [["127.0.0.1"], ["169.254.169.254"]])
    backend = GuardedBackend(allowed_ports=[port])
    # When it is connected to twice, then the first connect reaches the allowed address only
    stream = backend.connect_tcp("rebind.example", port, timeout=5)
    assert stream.get_extra_info("server_addr")[0] == "127.0.0.1"
    stream.close()
    # and the second is refused before any socket is opened
    with pytest.raises(UnsafeURL, match="not allowed"):
        backend.connect_tcp("rebind.example", port, timeout=5)


def test_the_async_backend_connects_only_to_the_address_it_checked(
    loopback_is_public: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(loopback_is_public.base.rsplit(":", 1)[1])
    _rebinding(monkeypatch, [["10.0.0.1", "127.0.0.1"], ["169.254.169.254"]])
    backend = GuardedAsyncBackend(allowed_ports=[port])

    async def connect_twice() -> str:
        stream = await backend.connect_tcp("rebind.example", port, timeout=5)
        peer = stream.get_extra_info("server_addr")[0]
        await stream.aclose()
        with pytest.raises(UnsafeURL, match="not allowed"):
            await backend.connect_tcp("rebind.example", port, timeout=5)
        return peer

    assert asyncio.run(connect_twice()) == "127.0.0.1"  # 10.0.0.1 was skipped, never tried
