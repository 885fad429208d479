"""``GET /``: a small web page to try edits: upload, instruction, progress, before and after.

Static files only (api/static): the page is a plain client of the public API, so it needs no server
logic of its own. No inline script or style, so a strict Content-Security-Policy holds.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.deps import StorageDep

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def content_security_policy(storage_origin: str | None) -> str:
    """The page's policy. GET .../result may redirect to a presigned URL on the object store, which
    the page fetches (connect-src) and could show directly (img-src): that origin is allowed too."""
    extra = f" {storage_origin}" if storage_origin else ""
    return (
        f"default-src 'self'; img-src 'self' blob: data:{extra}; script-src 'self'; style-src 'self'; "
        f"connect-src 'self'{extra}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


router = APIRouter(include_in_schema=False)


@router.get("/")
def index(storage: StorageDep) -> FileResponse:
    policy = content_security_policy(storage.presigned_origin())
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": policy})
