"""The request-body limits, enforced as bytes arrive: a chunked upload without Content-Length is cut off
after at most the size limit plus one chunk, and a body that stops arriving (`BODY_IDLE_TIMEOUT_S`
without a byte) or trickles in (slower on average than `BODY_MIN_RATE` once that same time has
passed) is given up; nothing of either is stored.

Plain ASGI: the `receive` channel is wrapped, so the checks hold for every way a route reads its body
(JSON, multipart spooled to disk, raw stream). A declared Content-Length over the limit is refused
before any byte is read. Going over raises `PayloadTooLarge`, a stall `RequestTimeout`, which the
route's error handling turns into the 413 or 408 envelope. Only waits for the body are timed: once it
has ended, a route may wait on the client as long as it likes (an event stream listens for the hang-up).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, RequestTimeout
from jobs.settings import Settings

FORM_OVERHEAD_BYTES = 64 * 1024  # room for form fields and multipart framing next to the image
# Far longer than a working connection goes without a byte, short enough that stalled uploads (each
# holding a connection, a task and maybe a spooled file) do not pile up. A constant until a deployment
# needs another value; a proxy in front may time out sooner.
BODY_IDLE_TIMEOUT_S = 60.0
# Bytes per second a body must average once BODY_IDLE_TIMEOUT_S has passed: each byte received buys
# 1 / BODY_MIN_RATE s more (Apache's mod_reqtimeout rule). Without it, a byte every 59 s held a
# connection for as long as the client liked; a phone on a poor link sends 10 to 100 times faster.
BODY_MIN_RATE = 1024


def body_limit(settings: Settings, content_type: str) -> int:
    """Bytes a request body may have: the image limit plus framing; base64 in JSON is 4/3 larger."""
    image = settings.max_upload_bytes
    if content_type.startswith("multipart/"):
        return image + FORM_OVERHEAD_BYTES
    return image * 4 // 3 + FORM_OVERHEAD_BYTES


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = body_limit(self.settings, headers.get("content-type", "").lower())
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self.app(scope, _refuse(limit), send)
            return
        await self.app(scope, _guarded(receive, limit), send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request is larger than {limit} bytes", details={"limit": limit})


def _refuse(limit: int) -> Receive:
    async def receive() -> Message:
        raise _too_large(limit)

    return receive


def _guarded(receive: Receive, limit: int) -> Receive:
    seen = 0
    ended = False
    started: float | None = None

    async def guarded() -> Message:
        nonlocal seen, ended, started
        if ended:
            return await receive()
        now = asyncio.get_running_loop().time()
        if started is None:
            started = now
        idle_s = BODY_IDLE_TIMEOUT_S
        rate_left_s = started + idle_s + seen / BODY_MIN_RATE - now
        try:
            async with asyncio.timeout(min(idle_s, rate_left_s)):
                message = await receive()
        except TimeoutError:
            if rate_left_s < idle_s:
                raise RequestTimeout(
                    f"the request body arrived slower than {BODY_MIN_RATE} bytes/s",
                    details={"min_rate_bytes_per_s": BODY_MIN_RATE},
                ) from None
            raise RequestTimeout(
                f"no byte of the request body arrived for {idle_s:g} s", details={"timeout_s": idle_s}
            ) from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        ended = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return guarded
