"""One suite for both storage backends: a folder on disk and a real S3 server (moto over HTTP)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from jobs import s3storage
from jobs.errors import StorageError
from jobs.s3storage import S3Storage
from jobs.settings import Settings
from jobs.storage import (
    LocalStorage,
    Storage,
    job_id_of,
    job_prefix,
    model_example_key,
    preview_key,
    result_key,
    source_key,
    storage_from_settings,
    storage_from_url,
)
from serve.redis_server import free_port


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(request.getfixturevalue("s3_bucket"), "prefix/x", endpoint_url=endpoint)


def test_put_get_exists_delete_roundtrip(storage: Storage) -> None:
    key = source_key("job-1", "image/png")
    assert not storage.exists(key)
    storage.put(key, b"\x89PNG data", "image/png")
    assert storage.exists(key)
    assert storage.get(key) == b"\x89PNG data"
    storage.put(key, b"replaced", "image/png")
    assert storage.get(key) == b"replaced"
    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # deleting an absent object is not an error


def test_undo_put_removes_the_object_and_its_folder_once_empty(storage: Storage) -> None:
    kept, undone = source_key("job-1", "image/png"), result_key("job-1", 1)
    storage.put(kept, b"stays", "image/png")
    storage.put(undone, b"rolled back", "image/png")
    storage.undo_put(undone)
    assert not storage.exists(undone) and storage.get(kept) == b"stays"  # a folder in use stays
    storage.undo_put(kept)
    assert not storage.exists(kept)
    if isinstance(storage, LocalStorage):
        assert [p.name for p in storage.root.rglob("*")] == ["jobs"]  # job-1/ went, jobs/ and the root stay


def test_delete_prefix_removes_a_jobs_objects_and_nothing_else(storage: Storage) -> None:
    mine = [source_key("job-1", "image/png"), result_key("job-1", 2), preview_key("job-1", 3)]
    others = [source_key("job-10", "image/png"), result_key("job-2", 1)]  # job-10 shares "jobs/job-1"
    for key in mine + others:
        storage.put(key, b"x", "image/png")
    storage.delete_prefix(job_prefix("job-1"))
    assert [storage.exists(k) for k in mine + others] == [False] * len(mine) + [True] * len(others)
    storage.delete_prefix(job_prefix("job-1"))  # nothing left: not an error
    with pytest.raises(ValueError):
        storage.delete_prefix("jobs/job-2")  # not a folder: would also match jobs/job-20/


def test_list_objects_lists_a_folder_in_key_order_and_resumes_after_a_key(storage: Storage) -> None:
    keys = [preview_key("job-2", 1), source_key("job-1", "image/png"), result_key("job-10", 1)]
    for key in [*keys, model_example_key("tiny", 0)]:  # models/ is outside the listed folder
        storage.put(key, b"x", "image/png")
    listed = list(storage.list_objects("jobs/"))
    assert [obj.key for obj in listed] == sorted(keys)
    assert all(abs(obj.modified - datetime.now(UTC)) < timedelta(minutes=5) for obj in listed)
    assert [obj.key for obj in storage.list_objects("jobs/", start_after=sorted(keys)[0])] == sorted(keys)[1:]
    assert list(storage.list_objects("jobs/nobody/")) == []
    with pytest.raises(ValueError):
        list(storage.list_objects("jobs"))  # not a folder


def test_list_objects_orders_and_resumes_as_s3_does_for_any_names(storage: Storage) -> None:
    # "-" and "." sort before "/", "0" after it: a folder's keys do not simply follow its name's order
    keys = ["jobs/a/x", "jobs/a/y/z", "jobs/a-b/x", "jobs/a.png", "jobs/a0/x", "jobs/b/c/d/e"]
    for key in keys:
        storage.put(key, b"x", "image/png")
    assert [obj.key for obj in storage.list_objects("jobs/")] == sorted(keys)
    for after in [*keys, "jobs/a/", "jobs/a/y", "jobs/a-", "jobs/b/c"]:  # resumes anywhere
        assert [o.key for o in storage.list_objects("jobs/", after)] == [k for k in sorted(keys) if k > after]


def test_a_resumed_local_listing_reads_no_folder_before_its_key(tmp_path: Path, monkeypatch) -> None:
    storage = LocalStorage(tmp_path / "objects")
    for job_id in ("job-1", "job-2", "job-3"):
        storage.put(preview_key(job_id, 1), b"x", "image/png")
    read: list[str] = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: read.append(Path(path).name) or scandir(path))
    listed = [obj.key for obj in storage.list_objects("jobs/", start_after=preview_key("job-2", 1))]
    assert listed == [preview_key("job-3", 1)]
    # job-2 holds the key it resumes after; job-1 is never read (before: every folder, on every pass)
    assert read == ["jobs", "job-2", "previews", "job-3", "previews"]


def test_job_id_of_names_the_folder_a_key_is_in() -> None:
    assert job_id_of(preview_key("job-1", 3)) == job_id_of(source_key("job-1", "image/png")) == "job-1"
    assert [job_id_of(k) for k in ["jobs/loose-file", "jobs//x", "models/jobs/x/y", "jobs/x/"]] == [None] * 4


def test_get_missing_raises_key_error(storage: Storage) -> None:
    with pytest.raises(KeyError):
        storage.get("jobs/missing/source.png")


def test_get_below_an_object_raises_key_error(storage: Storage) -> None:
    storage.put("jobs/a/previews", b"an object where a folder would be", "image/png")
    with pytest.raises(KeyError):
        storage.get("jobs/a/previews/1.png")


def test_check_passes_when_reachable(storage: Storage) -> None:
    storage.check()


def test_keys_name_the_job_and_attempt() -> None:
    assert source_key("abc", "image/jpeg") == "jobs/abc/source.jpg"
    assert result_key("abc", 2) == "jobs/abc/result-2.png"


def test_local_presigned_url_is_none(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path).presigned_url("jobs/a/result-1.png", 60) is None


def test_local_rejects_keys_outside_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path / "root").put("../escape.png", b"x", "image/png")


def test_s3_presigned_url_serves_the_object(s3_endpoint: str, s3_bucket: str) -> None:
    storage = S3Storage(s3_bucket, "results", endpoint_url=s3_endpoint)
    storage.put("jobs/a/result-1.png", b"edited", "image/png")
    url = storage.presigned_url("jobs/a/result-1.png", 60)
    assert url is not None and url.startswith(f"{s3_endpoint}/{s3_bucket}/results/jobs/a/result-1.png?")
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"edited"
    assert response.headers["content-type"] == "image/png"


def test_s3_check_fails_for_missing_bucket(s3_endpoint: str) -> None:
    with pytest.raises(StorageError):
        S3Storage("no-such-bucket", endpoint_url=s3_endpoint).check()


def test_storage_from_url_picks_backend(tmp_path: Path, s3_endpoint: str) -> None:
    assert isinstance(storage_from_url(f"file://{tmp_path}"), LocalStorage)
    s3 = storage_from_url("s3://bucket/some/prefix", endpoint_url=s3_endpoint)
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    with pytest.raises(ValueError):
        storage_from_url("ftp://host/x")


def test_s3_presigned_url_names_the_public_endpoint(s3_endpoint: str, s3_bucket: str) -> None:
    # The same moto server under two names: the platform's (127.0.0.1) and the clients' (localhost).
    port = urlparse(s3_endpoint).port
    public = f"http://localhost:{port}"
    storage = S3Storage(s3_bucket, "results", endpoint_url=s3_endpoint, public_endpoint_url=public)
    storage.put("jobs/a/result-1.png", b"edited", "image/png")
    assert storage.client.meta.endpoint_url == s3_endpoint
    url = storage.presigned_url("jobs/a/result-1.png", 60)
    assert url is not None and url.startswith(f"{public}/{s3_bucket}/results/jobs/a/result-1.png?")
    assert storage.presigned_origin() == public
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"edited"


def test_s3_reads_and_writes_never_use_the_public_endpoint(s3_endpoint: str, s3_bucket: str) -> None:
    # Nothing listens on the public endpoint: every operation still works, so each one went to the
    # internal endpoint, and signing the URL needed no connection at all.
    public = f"http://127.0.0.1:{free_port()}"
    storage = S3Storage(s3_bucket, endpoint_url=s3_endpoint, public_endpoint_url=public)
    storage.check()
    storage.put("jobs/b/source.png", b"source", "image/png")
    assert storage.exists("jobs/b/source.png") and storage.get("jobs/b/source.png") == b"source"
    url = storage.presigned_url("jobs/b/source.png", 60)
    assert url is not None and url.startswith(f"{public}/{s3_bucket}/jobs/b/source.png?")
    storage.delete("jobs/b/source.png")
    assert not storage.exists("jobs/b/source.png")


def test_storage_from_settings_wires_the_public_endpoint(
    make_settings: Callable[..., Settings], s3_endpoint: str, s3_bucket: str
) -> None:
    settings = make_settings(
        storage_url=f"s3://{s3_bucket}/v1",
        s3_endpoint_url=s3_endpoint,
        s3_public_endpoint_url="https://s3.example.com",
    )
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    assert storage.client.meta.endpoint_url == s3_endpoint
    assert storage.presigned_origin() == "https://s3.example.com"
    # without a public endpoint, URLs are signed for the one the platform uses
    same = storage_from_settings(make_settings(storage_url=f"s3://{s3_bucket}", s3_endpoint_url=s3_endpoint))
    assert same.presigned_origin() == s3_endpoint
    assert LocalStorage(settings.data_dir).presigned_origin() is None


def test_s3_that_accepts_but_never_answers_fails_after_bounded_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hung store (connections accepted, no answer) must fail the request with StorageError after
    S3_ATTEMPTS reads that each time out, instead of botocore's minutes of waiting."""
    monkeypatch.setattr(s3storage, "S3_READ_TIMEOUT_S", 1)  # the test's wait, not the product's
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.1)
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])  # held open, never answered
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept)
        thread.start()
        try:
            hung = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{server.getsockname()[1]}")
            with pytest.raises(StorageError, match="could not store"):
                hung.put("k", b"x", "image/png")
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
    assert len(accepted) == s3storage.S3_ATTEMPTS


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.put("k", b"x", "image/png"),
        lambda s: s.get("k"),
        lambda s: s.exists("k"),
        lambda s: s.delete("k"),
        lambda s: s.check(),
    ],
    ids=["put", "get", "exists", "delete", "check"],
)
def test_every_s3_operation_reports_an_unreachable_store_as_storage_error(
    operation: Callable[[S3Storage], object],
) -> None:
    """Nothing listens on the port: botocore's connection error, not a ClientError (exists let it
    through raw)."""
    unreachable = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError):
        operation(unreachable)


def test_local_storage_runs_without_boto3_imported(tmp_path: Path) -> None:
    """The API and the workers import boto3 only for s3:// storage: a GPU machine's image that holds
    PyTorch but not boto3 can run the embedded platform (benchmarks/gpu_kit.sh leaves boto3 out)."""
    code = (
        "import sys\n"
        "import api.main, worker.process, worker.tasks\n"
        "from jobs.storage import storage_from_url\n"
        f"storage_from_url({(tmp_path / 'objects').as_uri()!r}).put('k', b'x', 'image/png')\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
