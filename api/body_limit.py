"""The request-body limit, enforced as bytes arrive: a chunked upload without Content-Length is cut off
after at most the limit plus one chunk, and nothing of it is stored.

Plain ASGI: the `receive` channel is wrapped, so the check holds for every way a route reads its body
(JSON, multipart spooled to disk, raw stream). A declared Content-Length over the limit is refused
before any byte is read. Going over raises `PayloadTooLarge`, which the route's error handling turns
into the 413 envelope.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge
from jobs.settings import Settings

FORM_OVERHEAD_BYTES = 64 * 1024  # room for form fields and multipart framing next to the image


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
        await self.app(scope, _counting(receive, limit), send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request is larger than {limit} bytes", details={"limit": limit})


def _refuse(limit: int) -> Receive:
    async def receive() -> Message:
        raise _too_large(limit)

    return receive


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return counted
