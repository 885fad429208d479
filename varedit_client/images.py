"""What a caller may pass as the source image, and how each kind travels.

An ``http(s)://`` string is sent as ``image_url`` for the server to fetch (the bytes never pass through
the caller); a path, raw bytes or a PIL image is uploaded as the multipart ``image`` file.
"""

from __future__ import annotations

import io
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from PIL import Image

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
)


@dataclass(frozen=True)
class Upload:
    """An image file to send as multipart."""

    filename: str
    content: bytes
    content_type: str


@dataclass(frozen=True)
class RemoteImage:
    """An image the server fetches itself."""

    url: str


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def prepare(image: ImageInput) -> Upload | RemoteImage:
    """The request form of ``image``; a path that does not exist raises FileNotFoundError here, before
    anything is sent."""
    if isinstance(image, str) and is_url(image):
        return RemoteImage(image)
    if isinstance(image, Image.Image):
        return Upload("image.png", _png(image), "image/png")
    if isinstance(image, bytes | bytearray | memoryview):
        return _upload(bytes(image))
    path = Path(image)
    content = path.read_bytes()
    content_type = mimetypes.guess_type(path.name)[0] or _sniff(content)[0]
    return Upload(path.name, content, content_type)


def _png(image: Image.Image) -> bytes:
    """The image as PNG (lossless). A mode PNG cannot hold (CMYK or YCbCr, as Pillow opens some JPEGs;
    RGBX, LAB, ...) is first brought to RGB, or RGBA when it has transparency, and 32-bit or float grey
    to 16-bit grey: what the server makes of such an image anyway."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    except OSError:  # "cannot write mode CMYK as PNG"
        pass
    if image.mode in ("I", "F"):
        image = image.convert("I").convert("I;16")
    else:
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(content: bytes) -> Upload:
    content_type, extension = _sniff(content)
    return Upload(f"image.{extension}", content, content_type)


def _sniff(content: bytes) -> tuple[str, str]:
    """Content type and extension from the first bytes; the server decides what it accepts."""
    for signature, content_type, extension in _SIGNATURES:
        if content.startswith(signature):
            return content_type, extension
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp", "webp"
    return "application/octet-stream", "bin"
