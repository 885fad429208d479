"""Where a client connects and how patiently: shared by `Client` and `AsyncClient`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import httpx

from varedit_client.retry import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "VAREDIT_URL"
API_KEY_ENV = "VAREDIT_API_KEY"


def _version() -> str:
    try:
        return metadata.version("varedit-serve")
    except metadata.PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class ClientConfig:
    """``url`` and ``api_key`` default to ``VAREDIT_URL`` and ``VAREDIT_API_KEY``, as the commands do."""

    url: str
    api_key: str | None
    timeout: httpx.Timeout
    retry: RetryPolicy

    @classmethod
    def build(
        cls,
        url: str | None,
        api_key: str | None,
        timeout: float,
        max_attempts: int | None,
        retry: RetryPolicy | None,
    ) -> ClientConfig:
        if retry is None:
            retry = RetryPolicy() if max_attempts is None else RetryPolicy(max_attempts=max_attempts)
        elif max_attempts is not None:
            raise ValueError("pass either max_attempts or retry, not both")
        return cls(
            url=(url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/"),
            api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
            timeout=httpx.Timeout(timeout),
            retry=retry,
        )

    def http_options(self) -> dict[str, Any]:
        """Keyword arguments for the httpx client: base URL, timeouts and the headers every request has."""
        headers = {"User-Agent": f"varedit-client/{_version()}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {"base_url": self.url, "headers": headers, "timeout": self.timeout}
