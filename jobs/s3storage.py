"""`Storage` in an S3 bucket: AWS, MinIO or any S3-compatible service (boto3)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import boto3
from botocore.client import BaseClient, Config
from botocore.exceptions import BotoCoreError, ClientError

from jobs.errors import StorageError
from jobs.storage import StoredObject, check_folder

# A request waits on S3 at most about 2 x (connect + read): botocore's defaults (60 s each, 3 attempts)
# would hold a submit or a readiness probe for minutes against a store that accepts connections but
# never answers. A read timeout is the longest wait for the next bytes, not for a whole transfer.
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 15
S3_ATTEMPTS = 2


def _s3_client(endpoint_url: str | None, region: str) -> BaseClient:
    # Path-style addressing: MinIO and local endpoints have no per-bucket DNS names.
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
            connect_timeout=S3_CONNECT_TIMEOUT_S,
            read_timeout=S3_READ_TIMEOUT_S,
        ),
    )


class S3Storage:
    """Objects in an S3 bucket under ``prefix``; ``endpoint_url`` selects MinIO or another service.

    ``public_endpoint_url`` is the address clients reach the same service by, when it differs from the
    one the platform uses (MinIO inside a compose network): presigned URLs are signed for it, since the
    host is part of the signature. Signing is local, so that client never connects anywhere.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        public_endpoint_url: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = _s3_client(endpoint_url, region)
        self.signing_client = _s3_client(public_endpoint_url, region) if public_endpoint_url else self.client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"could not store {key}: {e}") from e

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise KeyError(key) from None
            raise StorageError(f"could not read {key}: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"could not read {key}: {e}") from e

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404", "NotFound"):
                return False
            raise StorageError(f"could not check {key}: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"could not check {key}: {e}") from e
        return True

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"could not delete {key}: {e}") from e

    def delete_prefix(self, prefix: str) -> None:
        keys = [{"Key": self._key(obj.key)} for obj in self.list_objects(prefix)]
        try:
            for start in range(0, len(keys), 1000):  # as many keys as one DeleteObjects takes
                done = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
                )
                if done.get("Errors"):  # a 200 that lists the keys it could not delete
                    raise StorageError(f"could not delete {prefix}: {done['Errors'][0]}")
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"could not delete {prefix}: {e}") from e

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[StoredObject]:
        check_folder(prefix)
        strip = len(self._key(""))
        options = {"StartAfter": self._key(start_after)} if start_after else {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix), **options
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"][strip:], item["LastModified"])
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"could not list {prefix}: {e}") from e

    def undo_put(self, key: str) -> None:
        self.delete(key)

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        return self.signing_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
        )

    def presigned_origin(self) -> str | None:
        endpoint = urlparse(self.signing_client.meta.endpoint_url)
        return f"{endpoint.scheme}://{endpoint.netloc}"

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"bucket {self.bucket} is not reachable: {e}") from e
