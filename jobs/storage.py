"""Object storage for source images, results, previews and models' example images: a local folder, or
any S3-compatible service (`jobs/s3storage.py`).

Keys are ``jobs/<job_id>/source.<ext>``, ``jobs/<job_id>/result-<attempt>.png``, the previews
``jobs/<job_id>/previews/<scale>.png`` and ``models/<model>/examples/<index>``; the key of the result
lives on the job row, so readers never derive it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlparse

from jobs.errors import StorageError
from jobs.settings import Settings

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
JOBS_PREFIX = "jobs/"


class StoredObject(NamedTuple):
    key: str
    modified: datetime  # the last write, timezone-aware UTC


def job_prefix(job_id: str) -> str:
    """Where every object of a job lives, so purging it needs no record of what was stored."""
    return f"{JOBS_PREFIX}{job_id}/"


def source_key(job_id: str, content_type: str) -> str:
    return f"{job_prefix(job_id)}source.{EXTENSIONS.get(content_type, 'bin')}"


def result_key(job_id: str, attempt: int) -> str:
    """Per attempt, so a fenced-out stale attempt can never overwrite the result that was accepted."""
    return f"{job_prefix(job_id)}result-{attempt}.png"


def preview_key(job_id: str, scale: int) -> str:
    """One per scale, not per attempt: a later attempt rewrites them (same seed, so nearly the same
    images), and the job row records how many are stored."""
    return f"{job_prefix(job_id)}previews/{scale}.png"


def job_id_of(key: str) -> str | None:
    """The job whose folder holds ``key``, None for a key outside every job folder."""
    if not key.startswith(JOBS_PREFIX):
        return None
    job_id, _, rest = key.removeprefix(JOBS_PREFIX).partition("/")
    return job_id if job_id and rest else None


def check_folder(prefix: str) -> None:
    """Refuse a prefix that is not a folder: "jobs/job-2" would also match jobs/job-20/."""
    if not prefix.endswith("/"):
        raise ValueError(f"a prefix is a folder, ending in '/': {prefix!r}")


def model_example_key(model: str, index: int) -> str:
    """Where a model's example source image is kept (written by its workers when they load it)."""
    return f"models/{model}/examples/{index}"


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; `KeyError` when absent."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are not an error."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix`` (a `job_prefix`, ending in "/")."""
        ...

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[StoredObject]:
        """Every object under ``prefix`` (a folder, ending in "/") whose key sorts after
        ``start_after``, in key order as S3 lists them, so a listing can resume where one stopped."""
        ...

    def undo_put(self, key: str) -> None:
        """Remove an object whose write is being rolled back, and the folder its `put` made for it when
        that is left empty (local folders; S3 has none). For a key in a folder of its own: a new job's."""
        ...

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A short-lived GET URL, or None when the backend cannot make one (then serve the bytes)."""
        ...

    def presigned_origin(self) -> str | None:
        """``scheme://host[:port]`` of the presigned URLs (None: there are none): the web page fetches
        results there, so its Content-Security-Policy must allow it."""
        ...

    def check(self) -> None:
        """Raise `StorageError` when the backend is unreachable (readiness probe)."""
        ...


class LocalStorage:
    """Objects as files under ``root``; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"object key escapes the storage root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no such file, or a file where a folder goes
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        check_folder(prefix)
        shutil.rmtree(self._path(prefix), ignore_errors=True)  # absent: nothing to remove

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[StoredObject]:
        check_folder(prefix)
        yield from self._walk(self._path(prefix), prefix, start_after)

    def _walk(self, folder: Path, prefix: str, start_after: str) -> Iterator[StoredObject]:
        """The objects in ``folder``, whose keys start with ``prefix``, in key order and lazily: a
        folder is read when the listing reaches it, and one whose keys all sort before ``start_after``
        is not read at all, so a sweep resuming near the end reads little."""
        try:
            with os.scandir(folder) as entries:
                keyed = sorted(
                    (prefix + e.name + ("/" if e.is_dir(follow_symlinks=False) else ""), e) for e in entries
                )
        except FileNotFoundError:  # absent, or removed since its parent was read (a job purged meanwhile)
            return
        for key, entry in keyed:  # a folder's "name/" sorts as each of its keys does against its siblings
            if key.endswith("/"):
                if key > start_after or start_after.startswith(key):
                    yield from self._walk(Path(entry.path), key, start_after)
            elif key > start_after:
                with contextlib.suppress(FileNotFoundError):  # deleted since the folder was read
                    yield StoredObject(key, datetime.fromtimestamp(entry.stat().st_mtime, UTC))

    def undo_put(self, key: str) -> None:
        self.delete(key)
        folder = self._path(key).parent
        if folder != self.root:
            with contextlib.suppress(OSError):  # not empty: it holds other objects, and stays
                folder.rmdir()

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        return None

    def presigned_origin(self) -> str | None:
        return None

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage folder {self.root} is not writable")


def storage_from_url(
    url: str,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    public_endpoint_url: str | None = None,
) -> Storage:
    """``file:///abs/path`` -> `LocalStorage`; ``s3://bucket/prefix`` -> `S3Storage`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(parsed.path)
    if parsed.scheme == "s3":
        from jobs.s3storage import S3Storage  # boto3 only where S3 is used (a GPU image may lack it)

        return S3Storage(
            parsed.netloc,
            parsed.path,
            endpoint_url=endpoint_url,
            region=region,
            public_endpoint_url=public_endpoint_url,
        )
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")


def storage_from_settings(settings: Settings) -> Storage:
    return storage_from_url(
        settings.storage_url,
        settings.s3_endpoint_url,
        settings.s3_region,
        public_endpoint_url=settings.s3_public_endpoint_url,
    )
