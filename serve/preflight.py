"""What the operator's commands check before they start anything, and how they name a problem: one
line, never a traceback, never a secret.

Two kinds of problem end a command: `ConfigProblem`, a value the operator must change (exit status 2,
as a usage error), and `DatabaseUnavailable`, a database that does not answer or cannot be opened
(a RuntimeError: exit status 1, as an unreachable broker).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

MASK = "***"


class ConfigProblem(Exception):
    """A setting or option that cannot work as given; the message names it."""


class DatabaseUnavailable(RuntimeError):
    """The database did not answer, or refused to open (a missing database, a wrong password)."""


def masked_url(url: str) -> str:
    """``url`` with its password (and any ``password=`` query parameter) replaced by ``***``, so it can
    be printed: ``redis://:***@127.0.0.1:6379/0``. The rest is kept as written (``sqlite:////abs``).
    Hand-written because SQLAlchemy's ``render_as_string(hide_password=True)`` masks only the address's
    password, and re-renders the rest."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else netloc
    path, qmark, query_and_fragment = tail.partition("?")
    query, hash_, fragment = query_and_fragment.partition("#")
    query = "&".join(
        f"{name}={MASK}" if "password" in unquote(name).lower() and eq else f"{name}{eq}{value}"
        for name, eq, value in (item.partition("=") for item in query.split("&"))
    )
    return f"{scheme}://{netloc}{path}{qmark}{query}{hash_}{fragment}"


def _one_line(text: str) -> str:
    return "; ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Within the block, a database that cannot be reached or opened raises `DatabaseUnavailable`, and
    a SQLite file whose folder cannot be made raises `ConfigProblem`: one line each, naming the
    database by its masked URL and the driver's reason (the driver never repeats a password; the
    password is masked in it all the same)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as e:
        reason = _one_line(str(e.orig if e.orig is not None else e))
        password = make_url(url).password
        if password:
            reason = reason.replace(str(password), MASK)
        raise DatabaseUnavailable(f"cannot open the database {masked_url(url)}: {reason}") from None
    except OSError as e:  # jobs.db makes a SQLite file's folder before connecting
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or not parsed.database or not e.filename:
            raise
        folder = Path(parsed.database).resolve().parent
        if not folder.is_relative_to(Path(str(e.filename)).resolve()):
            raise
        reason = "not a folder" if isinstance(e, FileExistsError) else (e.strerror or str(e))
        raise ConfigProblem(f"cannot make the database's folder {folder}: {reason}") from None


def make_data_dir(path: Path, source: str) -> Path:
    """Make the data folder (and its parents) and check that files can be written in it; `ConfigProblem`
    naming ``source`` (``--data-dir`` or ``VAREDIT_DATA_DIR``) when it cannot hold the data: a file is
    in the way, the path is under /proc, the folder is read-only."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if isinstance(e, FileExistsError) or (path.exists() and not path.is_dir()):
            raise ConfigProblem(f"{source} {path}: not a folder") from None
        raise ConfigProblem(f"{source} {path}: cannot make the folder ({e.strerror or e})") from None
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigProblem(f"{source} {path}: cannot write in the folder ({e.strerror or e})") from None
    return path
