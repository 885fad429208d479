"""The FastAPI app: ``create_app(settings)`` for tests and embedding, ``app`` for ``uvicorn api.main:app``.

Resources (engine, storage, publisher, notifier, watcher) are built in the lifespan, so importing this
module connects to nothing and never imports torch.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.ext.asyncio import async_sessionmaker

from api.body_limit import BodyLimitMiddleware
from api.errors import install_error_handlers
from api.facts import FactsCache
from api.limits import WriteLimits
from api.metrics import Metrics
from api.middleware import DocsPolicyMiddleware, HeadAsGetMiddleware, RequestContextMiddleware
from api.openapi import build_openapi, describe_webhooks, operation_id
from api.routes import edits, health, jobs, models, page
from api.routes import webhooks as webhook_routes
from api.watch import JobWatcher
from jobs import outbox
from jobs.db import make_async_engine, make_engine, make_sessionmaker
from jobs.logging import configure_logging
from jobs.notify import Notifier
from jobs.queue import CeleryPublisher, make_celery, webhook_sender
from jobs.settings import Settings, get_settings
from jobs.storage import storage_from_settings

# uvicorn's exit status for an app that cannot start: a `--workers N` child that ends with it stops
# the supervisor, which restarts a child that ends with any other status, forever.
UVICORN_STARTUP_FAILURE = 3

DESCRIPTION = """Instruction-guided image editing as asynchronous jobs.

Submit with `POST /v1/edits` (202 + `Location`), then poll `GET /v1/jobs/{id}` (optionally with
`Prefer: wait=N`), stream `GET /v1/jobs/{id}/events`, and fetch `GET /v1/jobs/{id}/result`.
Every error is `{"error": {"code", "message", "details"}}`."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = make_engine(settings.database_url)
    async_engine = make_async_engine(settings.database_url)
    app.state.async_sessions = async_sessionmaker(async_engine, expire_on_commit=False)
    app.state.sessions = make_sessionmaker(engine)
    app.state.storage = storage_from_settings(settings)
    app.state.celery = make_celery(settings)
    app.state.publisher = CeleryPublisher(app.state.celery)
    outbox.send_after_commit(
        app.state.sessions, webhook_sender(app.state.celery), outbox.reservation_s(settings.webhook_timeout_s)
    )
    app.state.notifier = Notifier(settings.broker_url)
    app.state.watcher = JobWatcher(settings.broker_url, settings.wait_recheck_s)
    app.state.limits = WriteLimits(settings)
    app.state.facts = FactsCache(app.state.sessions, settings)
    await app.state.watcher.start()
    try:
        yield
    finally:
        await app.state.watcher.stop()
        app.state.notifier.close()
        engine.dispose()
        await async_engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    # FastAPIOffline serves /docs and /redoc from assets installed with the package (no CDN).
    app = FastAPIOffline(
        title="VAREdit Serve",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(HeadAsGetMiddleware)  # innermost: the access log and metrics see HEAD
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(DocsPolicyMiddleware)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    for module in (edits, jobs, webhook_routes, models, health, page):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    describe_webhooks(app)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app


def _app_or_exit() -> FastAPI:
    """`create_app` from the environment. Invalid settings end the process with status 2; in a
    `uvicorn --workers N` child (a multiprocessing child) with status 3, which stops uvicorn."""
    try:
        return create_app()
    except SystemExit as e:
        if e.code == 2 and multiprocessing.parent_process() is not None:
            raise SystemExit(UVICORN_STARTUP_FAILURE) from None
        raise


app = _app_or_exit()
