"""Reading and checking ``POST /v1/edits`` input before anything is stored or queued."""

from __future__ import annotations

import base64
import binascii
import io
import secrets
from typing import Any

from fastapi import Request
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from api.errors import (
    ImageAspectRatio,
    ImageTooLarge,
    ImageUrlFetchFailed,
    ImageUrlNotAllowed,
    InvalidImage,
    InvalidRequest,
    PayloadTooLarge,
    PriorityNotAllowed,
    TooManyFetches,
    UnsupportedImageFormat,
    UnsupportedMediaType,
    WebhooksNotConfigured,
    WebhookUrlNotAllowed,
)
from api.forms import UndecodableField, read_form
from api.image_fetch import FetchFailed, ResponseTooLarge, fetch
from api.schemas import EditCreate
from api.slots import FETCHES, SlotsTaken
from jobs.errors import ModelNotReady
from jobs.netguard import UnsafeURL, check_url_syntax
from jobs.settings import Settings
from jobs.transitions import EditSpec
from jobs.workers import ModelFacts

# MPO is Pillow's name for a JPEG that carries more pictures (a phone's gain or depth map): a JPEG to
# every viewer, which shows, as the model edits, the first one.
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp"}
JSON_IMAGE_FIELDS = ("image_url", "image_base64")  # a form's image is its `image` file


def _parse(fields: dict[str, Any]) -> EditCreate:
    try:
        parsed = EditCreate.model_validate(fields)
    except ValidationError as e:
        details = [
            {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in e.errors()
        ]
        raise InvalidRequest("the request is not valid", details=details) from None
    for name, value in parsed:
        # JSON can escape half of a UTF-16 pair ("\ud800"): a str no database or UTF-8 answer holds.
        if isinstance(value, str) and not _is_unicode(value):
            raise InvalidRequest(
                f"{name} is not valid Unicode text",
                details=[{"loc": ["body", name], "msg": "contains a lone UTF-16 surrogate"}],
            )
    return parsed


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def read_edit_request(request: Request, settings: Settings, owner: str) -> tuple[EditCreate, bytes]:
    """The fields and the raw image bytes, from multipart (``image`` file) or JSON (``image_base64``, or
    ``image_url`` fetched through the address guard)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_image = settings.max_upload_bytes
    if content_type == "multipart/form-data":
        try:
            async with read_form(request, max_files=1, max_fields=32) as form:
                upload = form.get("image")
                # An empty field is one left out (a page's form sends every field), except the
                # instruction, which is required: "" is refused as empty, not as missing.
                fields: dict[str, Any] = {
                    k: v
                    for k, v in form.multi_items()
                    if k not in ("image", "webhook_events") and (v != "" or k == "instruction")
                }
                if form.getlist("webhook_events"):
                    fields["webhook_events"] = form.getlist("webhook_events")
                for name in JSON_IMAGE_FIELDS:
                    if name in fields:  # else ignored next to a file, or answered as a missing file
                        raise InvalidRequest(
                            f"{name} is for JSON bodies; a form sends the image as the `image` file",
                            details=[{"loc": ["body", name], "msg": "not a form field"}],
                        )
                if not isinstance(upload, UploadFile):
                    raise InvalidRequest(
                        "the form needs an `image` file", details=[{"loc": ["body", "image"]}]
                    )
                image = await upload.read(max_image + 1)
        except UndecodableField as e:
            raise InvalidRequest(
                e.message,
                details=[{"loc": ["body", e.name], "msg": f"not valid {e.charset} text"}],
            ) from None
        except MultiPartException as e:
            raise InvalidRequest(
                f"the multipart body cannot be read: {e.message} (one file, `image`, and text fields)"
            ) from None
        parsed = _parse(fields)
    elif content_type == "application/json":
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            raise InvalidRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        parsed = _parse(body)
        if (parsed.image_url is None) == (parsed.image_base64 is None):
            raise InvalidRequest(
                "send exactly one of image_base64 and image_url",
                details=[{"loc": ["body", "image_base64"]}, {"loc": ["body", "image_url"]}],
            )
        if parsed.image_url is not None:
            image = await fetch_image(parsed.image_url, settings, owner)
        else:
            try:
                image = base64.b64decode(parsed.image_base64 or "", validate=True)
            except (binascii.Error, ValueError):
                raise InvalidImage("image_base64 is not valid base64") from None
    else:
        raise UnsupportedMediaType("send multipart/form-data or application/json")
    if len(image) > max_image:
        raise PayloadTooLarge(f"the image is larger than {max_image} bytes", details={"limit": max_image})
    return parsed, image


async def fetch_image(url: str, settings: Settings, owner: str) -> bytes:
    """The bytes behind ``image_url``, fetched through the address guard (jobs/netguard.py), with at
    most ``image_url_max_concurrent`` fetches of one caller in flight in this process."""
    where = [{"loc": ["body", "image_url"], "input": url}]
    try:
        with FETCHES.hold(owner, settings.image_url_max_concurrent):
            return await fetch(
                url,
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.image_url_timeout_s,
                max_redirects=settings.image_url_max_redirects,
                allow_private=settings.allow_private_urls,
                allowed_ports=settings.allowed_url_ports,
            )
    except SlotsTaken:
        limit = settings.image_url_max_concurrent
        raise TooManyFetches(
            f"at most {limit} image_url fetches may be in flight per caller; retry shortly",
            retry_after_s=1,
            details={"limit": limit},
        ) from None
    except UnsafeURL as e:
        raise ImageUrlNotAllowed(str(e), details=where) from e
    except ResponseTooLarge as e:
        raise PayloadTooLarge(str(e), details={"limit": settings.max_upload_bytes}) from e
    except FetchFailed as e:
        raise ImageUrlFetchFailed(str(e), details=where) from e


def inspect_image(data: bytes, settings: Settings) -> str:
    """The image's content type, after checking format, pixel count (decompression bombs), longest side
    and aspect ratio (the model pads to a square of the longest side), then decoding.

    An animation (APNG, animated WebP) is accepted and edited as its first frame: only that frame is
    decoded here, and the model takes only that one.
    """
    try:
        # open() reads only the header, so size and shape are checked before anything is decoded.
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in CONTENT_TYPES:
                raise UnsupportedImageFormat(
                    f"image format {img.format} is not accepted; send PNG, JPEG or WebP",
                    details={"format": img.format},
                )
            width, height = img.size
            if width * height > settings.max_pixels:
                raise InvalidImage(
                    f"the image has {width * height} pixels; at most {settings.max_pixels} are accepted",
                    details={"width": width, "height": height, "max_pixels": settings.max_pixels},
                )
            long, short = max(width, height), min(width, height)
            max_side, max_ratio = settings.max_image_side, settings.max_aspect_ratio
            if long > max_side:
                raise ImageTooLarge(
                    f"the image is {width}x{height}; its longest side may be at most {max_side}",
                    details={"width": width, "height": height, "limit": max_side},
                )
            if long > max_ratio * short:
                raise ImageAspectRatio(
                    f"the image is {width}x{height}; its long side may be at most {max_ratio}x its short one",
                    details={"width": width, "height": height, "limit": max_ratio},
                )
            img.load()  # decode fully: truncated or corrupt data fails here, not on the GPU
            return CONTENT_TYPES[img.format]
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InvalidImage("the upload is not a decodable PNG, JPEG or WebP image") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"the image could not be decoded: {e}") from e


def _range_error(name: str, value: Any, low: Any, high: Any, default_of: str | None = None) -> InvalidRequest:
    """``default_of``: the model whose default this value is. The range is the deployment's and the
    default the model folder's, so they can disagree; the caller then learns it must send a value."""
    message = f"{name} must be between {low} and {high}"
    if default_of is not None:
        outside = f"model {default_of}'s default {name} ({value}) lies outside this deployment's range"
        message += f": send one, as {outside}"
    return InvalidRequest(
        message,
        details=[{"loc": ["body", name], "msg": f"must be between {low} and {high}", "input": value}],
    )


def build_spec(
    fields: EditCreate,
    settings: Settings,
    served: dict[str, ModelFacts | None],
    signs_webhooks: bool = False,
    max_priority: int = 0,
) -> EditSpec:
    """Check fields against the deployment's limits and the model's facts (`jobs.workers.model_facts`)
    and fill in defaults: the model's recommended cfg and tau, its default resolution, a random seed.
    ``signs_webhooks``: the caller has a webhook secret of its own (an API key); ``max_priority``: the
    highest priority it may ask for (above normal is a right an operator grants a key)."""
    instruction = fields.instruction.strip()
    if not instruction:
        raise InvalidRequest("instruction must not be empty", details=[{"loc": ["body", "instruction"]}])
    check_text("instruction", instruction, settings.max_instruction_chars)
    negative_instruction = (fields.negative_instruction or "").strip()
    check_text("negative_instruction", negative_instruction, settings.max_instruction_chars)
    model = fields.model or settings.default_model
    if model not in served:
        raise InvalidRequest(
            f"unknown model {model!r}",
            details=[{"loc": ["body", "model"], "msg": f"one of {list(served)}", "input": model}],
        )
    facts = served[model]
    if facts is None:
        raise ModelNotReady(
            f"no worker has loaded {model} yet, so its resolutions are not known; retry shortly",
            details={"model": model},
        )
    resolution = facts.default_resolution if fields.resolution is None else fields.resolution
    if resolution not in facts.resolutions:
        raise InvalidRequest(
            f"model {model} serves resolutions {facts.resolutions}",
            details=[
                {"loc": ["body", "resolution"], "msg": f"one of {facts.resolutions}", "input": resolution}
            ],
        )
    cfg = facts.sampling["cfg"] if fields.cfg is None else fields.cfg
    if not settings.cfg_min <= cfg <= settings.cfg_max:
        default_of = model if fields.cfg is None else None
        raise _range_error("cfg", cfg, settings.cfg_min, settings.cfg_max, default_of)
    tau = facts.sampling["tau"] if fields.tau is None else fields.tau
    if not settings.tau_min <= tau <= settings.tau_max:
        default_of = model if fields.tau is None else None
        raise _range_error("tau", tau, settings.tau_min, settings.tau_max, default_of)
    seed = secrets.randbelow(settings.seed_max + 1) if fields.seed is None else fields.seed
    if not 0 <= seed <= settings.seed_max:
        raise _range_error("seed", seed, 0, settings.seed_max)
    if fields.webhook_url is not None:
        check_webhook_url(fields.webhook_url, settings, signs_webhooks)
    if fields.priority > max_priority:
        raise PriorityNotAllowed(
            f"this caller may ask for priority {max_priority} at most",
            details=[
                {"loc": ["body", "priority"], "msg": f"at most {max_priority}", "input": fields.priority}
            ],
        )
    start_timeout_s = settings.start_timeout_s if fields.start_timeout_s is None else fields.start_timeout_s
    if start_timeout_s > settings.start_timeout_s:
        raise _range_error("start_timeout_s", start_timeout_s, 1, settings.start_timeout_s)
    return EditSpec(
        instruction=instruction,
        model=model,
        resolution=resolution,
        seed=seed,
        cfg=cfg,
        tau=tau,
        start_timeout_s=start_timeout_s,
        priority=fields.priority,
        webhook_url=fields.webhook_url,
        webhook_events=list(fields.webhook_events) if fields.webhook_events else None,
        previews=bool(fields.previews),
        negative_instruction=negative_instruction,
    )


def check_text(field: str, text: str, max_chars: int) -> None:
    """A text field: at most ``max_chars`` characters, and storable (PostgreSQL text holds no NUL)."""
    where = {"loc": ["body", field]}
    if len(text) > max_chars:
        raise InvalidRequest(
            f"{field} may be at most {max_chars} characters, got {len(text)}",
            details=[{**where, "msg": f"at most {max_chars} characters", "input": len(text)}],
        )
    if "\x00" in text:
        raise InvalidRequest(
            f"{field} must not contain NUL characters", details=[{**where, "msg": "contains a NUL character"}]
        )


def check_webhook_url(url: str, settings: Settings, signs_webhooks: bool) -> None:
    """Refuse a webhook that cannot be signed or may not be called (checked again at every connect)."""
    if not (signs_webhooks or settings.webhook_secrets):
        raise WebhooksNotConfigured("this deployment has no webhook secret (VAREDIT_WEBHOOK_SECRETS)")
    try:
        check_url_syntax(url, settings.allow_private_urls, settings.allowed_url_ports)
    except UnsafeURL as e:
        raise WebhookUrlNotAllowed(str(e), details=[{"loc": ["body", "webhook_url"], "input": url}]) from e
