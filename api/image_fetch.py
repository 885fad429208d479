"""Fetching ``image_url``: a GET through the address guard (`jobs/netguard.py`), following a few
redirects itself so that every target is checked like the first, within a byte and a time budget."""

from __future__ import annotations

import time
from urllib.parse import urljoin

import httpcore

from jobs.netguard import Unresolvable, UnsafeURL, check_url_syntax, guarded_pool, header_map, timeouts

USER_AGENT = "varedit-serve/1"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(OSError):
    """The URL answered with an error, not at all, or not in time."""


class ResponseTooLarge(FetchFailed):
    pass


def fetch(url: str, *, max_bytes: int, timeout_s: float, max_redirects: int, allow_private: bool) -> bytes:
    """GET a client-chosen URL through the guard: at most ``max_bytes``, within ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    with guarded_pool(allow_private) as pool:
        for _ in range(max_redirects + 1):
            check_url_syntax(url, allow_private)
            try:
                with pool.stream(
                    "GET",
                    url,
                    headers={"user-agent": USER_AGENT, "accept": "image/*"},
                    extensions={"timeout": timeouts(timeout_s)},
                ) as response:
                    headers = header_map(response.headers)
                    if response.status in REDIRECTS and headers.get("location"):
                        url = urljoin(url, headers["location"])
                        continue
                    if response.status != 200:
                        raise FetchFailed(f"the URL answered HTTP {response.status}")
                    if int(headers.get("content-length") or 0) > max_bytes:
                        raise ResponseTooLarge(f"the image is larger than {max_bytes} bytes")
                    data = bytearray()
                    for chunk in response.iter_stream():
                        data += chunk
                        if len(data) > max_bytes:
                            raise ResponseTooLarge(f"the image is larger than {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise FetchFailed(f"the download took longer than {timeout_s:g} s")
                    return bytes(data)
            except httpcore.UnsupportedProtocol as e:
                raise UnsafeURL(str(e)) from e
            except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
                raise FetchFailed(f"the URL could not be fetched: {type(e).__name__}") from e
            except Unresolvable as e:
                raise FetchFailed(str(e)) from e
    raise FetchFailed(f"more than {max_redirects} redirects")
