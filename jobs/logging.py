"""structlog setup shared by the API and the workers: JSON lines with bound context.

Bind per-request or per-task fields with ``structlog.contextvars.bind_contextvars(request_id=...)``
(or ``job_id``, ``attempt``, ``worker_id``); every log line in that context carries them.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library (uvicorn, celery, sqlalchemy) through one renderer."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        # Plain tracebacks: rich's pretty ones take seconds to render.
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in CHATTY_LOGGERS:  # heard again at DEBUG
        logging.getLogger(chatty).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)


# Celery logs every periodic task it sends, receives and completes at INFO: once a second for the
# webhook dispatch, idle or not. What happens to jobs is logged by our own tasks instead.
CHATTY_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")
