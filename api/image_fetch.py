"""Fetching ``image_url``: a GET through the address guard (`jobs/netguard.py`), following a few
redirects itself so that every target is checked like the first, within a byte budget and one deadline
for the whole fetch. It runs on the event loop (httpcore's async API), so slow image servers hold no
threads the rest of the API needs; `api/slots.py` caps how many fetches one caller has in flight."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urljoin

import anyio
import httpcore
import structlog

from jobs.netguard import (
    Unresolvable,
    UnsafeURL,
    check_url_syntax,
    describe_failure,
    guarded_async_pool,
    header_map,
    timeouts,
)

log = structlog.get_logger(__name__)

USER_AGENT = "varedit-serve/1"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(OSError):
    """The URL answered with an error, not at all, or not in time."""


class ResponseTooLarge(FetchFailed):
    pass


async def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    allow_private: bool,
    allowed_ports: Collection[int] = (),
) -> bytes:
    """GET a client-chosen URL through the guard: at most ``max_bytes``, within ``timeout_s`` in all
    (connecting, redirects and the download together)."""
    try:
        with anyio.fail_after(timeout_s):
            async with guarded_async_pool(allow_private, allowed_ports) as pool:
                for _ in range(max_redirects + 1):
                    check_url_syntax(url, allow_private, allowed_ports)
                    location, body = await _get(pool, url, max_bytes, timeout_s)
                    if location is None:
                        return body
                    try:
                        url = urljoin(url, location)
                    except ValueError:  # e.g. an unclosed IPv6 bracket
                        raise FetchFailed(
                            "the URL redirected to a Location that is not a valid URL"
                        ) from None
    except TimeoutError:
        raise FetchFailed(f"the URL did not answer within {timeout_s:g} s") from None
    except httpcore.UnsupportedProtocol as e:
        raise UnsafeURL("the URL must be http(s)://host/...") from e
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
        log.info("image_url_fetch_failed", error=repr(e), cause=repr(e.__cause__))
        raise FetchFailed(f"the URL could not be fetched: {describe_failure(e)}") from e
    except Unresolvable as e:
        raise FetchFailed(str(e)) from e
    raise FetchFailed(f"more than {max_redirects} redirects")


async def _get(
    pool: httpcore.AsyncConnectionPool, url: str, max_bytes: int, timeout_s: float
) -> tuple[str | None, bytes]:
    """One GET: the redirect target (and no body), or no target and the image's bytes."""
    async with pool.stream(
        "GET",
        url,
        headers={"user-agent": USER_AGENT, "accept": "image/*"},
        extensions={"timeout": timeouts(timeout_s)},
    ) as response:
        headers = header_map(response.headers)
        if response.status in REDIRECTS and headers.get("location"):
            return headers["location"], b""
        if response.status != 200:
            raise FetchFailed(f"the URL answered HTTP {response.status}")
        if int(headers.get("content-length") or 0) > max_bytes:
            raise ResponseTooLarge(f"the image is larger than {max_bytes} bytes")
        return None, await _read(response, max_bytes)


async def _read(response: httpcore.Response, max_bytes: int) -> bytes:
    """The body, refused as soon as it grows past ``max_bytes`` (a declared length may lie)."""
    data = bytearray()
    async for chunk in response.aiter_stream():
        data += chunk
        if len(data) > max_bytes:
            raise ResponseTooLarge(f"the image is larger than {max_bytes} bytes")
    return bytes(data)
