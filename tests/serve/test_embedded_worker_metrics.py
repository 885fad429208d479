"""`EmbeddedPlatform(worker_metrics_port=P)`: each worker process serves its own metrics, edit workers on
P, P+1, ... and the light worker on the next port (one shared port would be bound by one worker only)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from serve.embedded import EmbeddedPlatform
from serve.redis_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_each_worker_serves_its_metrics_on_its_own_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("VAREDIT_")]:
        monkeypatch.delenv(name)
    env = {"VAREDIT_MODEL_PATH": "fake://?scales=2&scale_ms=5", "VAREDIT_MODELS": '["tiny"]'}
    base = free_port()
    with EmbeddedPlatform(
        port=0, data_dir=tmp_path / "data", extra_env=env, edit_workers=2, worker_metrics_port=base
    ) as plat:
        plat.wait_ready(timeout_s=120)
        urls = plat.worker_metrics_urls
        assert urls == {
            "edit0-tiny": f"http://127.0.0.1:{base}/metrics",
            "edit1-tiny": f"http://127.0.0.1:{base + 1}/metrics",
            "light-worker": f"http://127.0.0.1:{base + 2}/metrics",
        }
        for name in ("edit0-tiny", "edit1-tiny"):  # served once the model is loaded, before ready
            assert 'varedit_worker_busy{model="tiny"} 0.0' in httpx.get(urls[name], timeout=10).text
        assert "VAREDIT_WORKER_METRICS_PORT" not in plat.child("api").env
        # the light worker's pool child starts its endpoint as it comes up (no readiness row to wait on)
        for _ in range(100):
            try:
                if httpx.get(urls["light-worker"], timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            plat.check_children()
            time.sleep(0.2)  # polling the endpoint, bounded by the loop
        else:
            pytest.fail("the light worker's metrics never answered")
