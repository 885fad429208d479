"""Engine and sessions for SQLite (embedded) and PostgreSQL (production), and schema migration.

The schema is only ever made by Alembic (`migrate`); nothing calls ``create_all``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

# Alembic's folder: the repository's migrations/ in a checkout (and an editable install), or the copy a
# wheel carries inside this package (pyproject.toml maps migrations/ to jobs/migrations).
_INSTALLED_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATIONS_DIR = (
    _INSTALLED_MIGRATIONS
    if _INSTALLED_MIGRATIONS.is_dir()
    else Path(__file__).resolve().parent.parent / "migrations"
)
SQLITE_BUSY_TIMEOUT_S = 30  # writers queue behind each other instead of failing with "database is locked"


def make_engine(url: str, **engine_kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL (readers never block the writer) and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **engine_kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def make_async_engine(url: str) -> AsyncEngine:
    """An asyncio engine for ``url`` (psycopg 3 natively, SQLite through aiosqlite): for the API's few
    per-request reads that must not take a worker thread, such as authentication."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return create_async_engine(
            parsed.set(drivername="sqlite+aiosqlite"), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
        )
    return create_async_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit, so rows can be rendered after the transaction."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` with Alembic (the only way the schema is made)."""
    from alembic import command
    from alembic.config import Config

    ini = MIGRATIONS_DIR.parent / "alembic.ini"  # a checkout's; an installed copy has none and needs none
    cfg = Config(str(ini) if ini.is_file() else None)
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, revision)
