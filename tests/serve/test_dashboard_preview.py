"""scripts/dashboard_preview.py's panel renderer on canned Prometheus answers (the full script needs
Prometheus and Chromium and is not run here)."""

from __future__ import annotations

import http.server
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def preview() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dashboard_preview", ROOT / "scripts" / "dashboard_preview.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard(preview: ModuleType) -> dict[str, Any]:
    return json.loads(preview.DASHBOARD.read_text())


def _answer(*results: tuple[dict[str, str], list[float | str]]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": metric, "values": [[1000.0 + 2 * i, str(v)] for i, v in enumerate(values)]}
                for metric, values in results
            ],
        },
    }


def test_every_query_has_its_variables_substituted(preview: ModuleType, dashboard: dict[str, Any]) -> None:
    exprs = [t.expr for p in dashboard["panels"] for t in preview.panel_targets(p, "30s")]
    assert exprs and all("$" not in e for e in exprs)
    assert 'varedit_queue_depth{model=~".*"}' in exprs[0]


def test_a_panel_is_drawn_with_its_title_legends_units_and_right_axis(
    preview: ModuleType, dashboard: dict[str, Any]
) -> None:
    panel = next(p for p in dashboard["panels"] if p.get("title") == "Worker utilisation")
    busy, per_worker = preview.panel_targets(panel, "30s")
    assert (busy.unit, busy.right, per_worker.unit, per_worker.right) == ("percentunit", False, "reqps", True)
    busy.series = preview.series_from(_answer(({"model": "tiny"}, [0, 0.5, "NaN", 1])), busy)
    per_worker.series = preview.series_from(_answer(({"model": "tiny"}, [0, 2, 4, 3])), per_worker)
    assert busy.series[0].points[2] == (1004.0, None)  # NaN: a gap in the line

    block = preview.render_panel(panel, [busy, per_worker], 1000.0, 1006.0, 480, 240)
    assert '<div class="title">Worker utilisation</div>' in block
    assert "tiny busy</span>" in block and "tiny jobs/s per worker (right axis)</span>" in block
    assert block.count("<polyline") == 2 and block.count("<circle") == 1  # busy: a run of 2, then 1 point
    assert "100%" in block and "4 req/s" in block  # the left and right axes in their units


def test_an_empty_panel_says_no_data_and_the_page_has_every_title(
    preview: ModuleType, dashboard: dict[str, Any]
) -> None:
    panels = [(p, preview.panel_targets(p, "30s")) for p in dashboard["panels"]]
    page = preview.render_page(dashboard, panels, 1000.0, 1100.0, "canned")
    for panel in dashboard["panels"]:
        assert json.dumps(panel["title"])[1:-1].replace("'", "&#x27;") in page
    timeseries = [p for p in dashboard["panels"] if p["type"] == "timeseries"]
    assert page.count(">No data</text>") == len(timeseries)


def test_legend_format(preview: ModuleType) -> None:
    assert (
        preview.legend_of("{{model}} {{ outcome }}", {"model": "tiny", "outcome": "failed"}) == "tiny failed"
    )
    assert preview.legend_of("{{verdict}} /s", {}) == "/s"
    assert preview.legend_of("", {"__name__": "up", "job": "api"}) == 'up{job="api"}'


@pytest.fixture
def refusing_prometheus() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(
                {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
            ).encode()
            self.send_response(400)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_refused_query_fails_loudly(preview: ModuleType, refusing_prometheus: str) -> None:
    with pytest.raises(preview.PromQLError, match=r"sum\(up\}.*bad_data: parse error"):
        preview.query_range(refusing_prometheus, "sum(up}", 0, 10, 2)
