"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api.deps import SessionsDep, SettingsDep, StorageDep
from api.errors import error_response
from jobs.settings import Settings
from jobs.storage import Storage

router = APIRouter(tags=["health"])
BROKER_TIMEOUT_S = 2


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


def _checks(request: Request, sessions: sessionmaker[Session], storage: Storage) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"error: {type(e).__name__}"
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
        checks["broker"] = "ok"
    except Exception as e:
        checks["broker"] = f"error: {type(e).__name__}"
    try:
        storage.check()
        checks["storage"] = "ok"
    except Exception as e:
        checks["storage"] = f"error: {type(e).__name__}"
    return checks


@router.get("/readyz", responses={503: {"description": "a dependency is not ready; details name it"}})
async def readyz(request: Request, sessions: SessionsDep, storage: StorageDep) -> Response:
    """Readiness: this process can accept jobs (database, broker and storage reachable). Edit workers
    are not required: with workers scaled to zero, accepted jobs are what wakes them (their readiness is
    on /v1/models and in the metrics)."""
    checks = await run_in_threadpool(_checks, request, sessions, storage)
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return error_response(503, "not_ready", "a dependency is not ready", checks)


def _may_scrape(request: Request, settings: Settings) -> bool:
    """With VAREDIT_METRICS_TOKEN set, only a scraper presenting it; with keys on and no token, nobody
    (request counts and timings by route are the operator's); on a laptop (auth off), anyone."""
    if settings.metrics_token:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(presented.encode(), settings.metrics_token.encode())
    return settings.auth == "none"


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 403: {"description": "not for this caller"}},
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics (see `VAREDIT_METRICS_TOKEN`)."""
    if not _may_scrape(request, settings):
        return error_response(403, "forbidden", "metrics need the metrics token (VAREDIT_METRICS_TOKEN)")
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
