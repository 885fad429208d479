"""A picture of the Grafana dashboard (deploy/k8s/grafana/varedit-dashboard.json) on live metrics.

    python scripts/dashboard_preview.py                      # writes docs/dashboard.png (~4 minutes)
    python scripts/dashboard_preview.py --duration 60 --html /tmp/dashboard.html

What the picture is, honestly: the dashboard's own PromQL, evaluated by a real Prometheus over metrics
scraped from a real (embedded) platform, drawn by THIS script as inline SVG and photographed by headless
Chromium. It is not Grafana's renderer (Grafana is not installable here): the layout follows each
panel's gridPos, titles, legendFormat, units, min and threshold lines, nothing else of Grafana's.

Steps:

1. starts the embedded platform (`serve.embedded.EmbeddedPlatform`) with the simulated model
   (``fake://?scales=10&scale_ms=50``: 500 ms per batch, batches of up to 2, so bursts queue up) and 2
   edit workers, each with its own ``VAREDIT_WORKER_METRICS_PORT`` (the light worker: the next port);
2. starts Prometheus (the ``prometheus`` binary, Debian's 2.42: ``apt-get install prometheus``) with a
   generated config and a temporary storage folder, scraping every 2 s the API's /metrics, beat's job
   gauges and the three workers' ports;
3. drives a varied load for ``--duration`` seconds: bursts of submits, a trickle between them, cancels
   (of queued, running and already ended jobs), job reads, a few 404s and 422s, and webhooks to a
   local receiver that answers 500 (retried after 1, 2, 4 s) or 410 now and then;
4. evaluates every target of every panel with ``/api/v1/query_range`` (``$model`` -> ``.*``,
   ``$__rate_interval`` -> ``--rate-interval``); a PromQL error stops the script with the query and
   Prometheus' message, and queries that return nothing are listed;
5. writes one static HTML page (inline SVG, no downloads) and saves a full-page screenshot to
   ``--out`` with headless Chromium (Debian's chromium and chromium-driver, and selenium).

Needs prometheus, chromium, chromium-driver and selenium; not run in CI. Light on the CPU: the model
only sleeps; the load is a couple of submits per second with bursts of a few dozen. Any PromQL error
exits non-zero; an empty query is reported on stderr and drawn as "No data", as Grafana would.
"""

from __future__ import annotations

import argparse
import base64
import html
import http.server
import io
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DASHBOARD = ROOT / "deploy" / "k8s" / "grafana" / "varedit-dashboard.json"
SCRAPE_S = 2
STEP_S = 2
PNG_BUDGET = 300 * 1024

# -- the panels: queries and drawing (no platform needed; tests/serve/test_dashboard_preview.py) ---------

PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d")
THRESHOLD_COLOURS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "yellow": "#fade2a"}
PAGE_W = 1500  # px; Grafana's 24 grid columns across it
ROW_H = 30  # px per gridPos height unit, for the plot area
GAP = 10


class PromQLError(RuntimeError):
    """Prometheus refused a query (a syntax or evaluation error): the dashboard needs fixing."""


@dataclass
class Series:
    label: str
    points: list[tuple[float, float | None]]  # (unix time, value); None: NaN/Inf, drawn as a gap
    unit: str = "short"
    right: bool = False  # on a right-hand axis (a fieldConfig override for its target)


@dataclass
class Target:
    ref_id: str
    expr: str
    legend: str
    unit: str = "short"
    right: bool = False
    series: list[Series] = field(default_factory=list)


def substitute(expr: str, rate_interval: str) -> str:
    """The dashboard variables as Grafana would expand them with "All" models selected."""
    expr = expr.replace("${model}", ".*").replace("$model", ".*")
    return expr.replace("${__rate_interval}", rate_interval).replace("$__rate_interval", rate_interval)


def panel_targets(panel: dict[str, Any], rate_interval: str) -> list[Target]:
    """A panel's queries, each with the unit and axis its fieldConfig (and byFrameRefID overrides) give."""
    config = panel.get("fieldConfig", {})
    default_unit = config.get("defaults", {}).get("unit", "short")
    overrides: dict[str, dict[str, Any]] = {}
    for override in config.get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byFrameRefID":
            props = {p["id"]: p.get("value") for p in override.get("properties", [])}
            overrides[matcher.get("options", "")] = props
    targets = []
    for i, t in enumerate(panel.get("targets", [])):
        ref = t.get("refId") or chr(ord("A") + i)
        props = overrides.get(ref, {})
        targets.append(
            Target(
                ref_id=ref,
                expr=substitute(t["expr"], rate_interval),
                legend=t.get("legendFormat", ""),
                unit=props.get("unit", default_unit),
                right=props.get("custom.axisPlacement") == "right",
            )
        )
    return targets


def legend_of(fmt: str, metric: dict[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the label's value ('' when absent)."""
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
        return f"{metric.get('__name__', '')}{{{inner}}}"
    return re.sub(
        r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt
    ).strip()


def series_from(answer: dict[str, Any], target: Target) -> list[Series]:
    """Series from a successful `query_range` answer (``{"status": "success", "data": {...}}``)."""
    found = []
    for result in answer["data"]["result"]:
        points: list[tuple[float, float | None]] = []
        for t, v in result["values"]:
            value = float(v)
            points.append((float(t), value if math.isfinite(value) else None))
        found.append(Series(legend_of(target.legend, result["metric"]), points, target.unit, target.right))
    return sorted(found, key=lambda s: s.label)


def query_range(prom_url: str, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
    """`/api/v1/query_range`; raises PromQLError with Prometheus' message when it refuses the query."""
    params = urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
    )
    try:
        with urllib.request.urlopen(f"{prom_url}/api/v1/query_range?{params}", timeout=30) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as e:  # 400 bad_data / 422 execution errors carry a JSON body
        body = e.read().decode(errors="replace")
        try:
            detail = json.loads(body)
            message = f"{detail.get('errorType')}: {detail.get('error')}"
        except ValueError:
            message = body[:500]
        raise PromQLError(f"Prometheus refused {expr!r}: {message}") from e
    if answer.get("status") != "success":
        raise PromQLError(f"Prometheus refused {expr!r}: {answer.get('errorType')}: {answer.get('error')}")
    for warning in answer.get("warnings", []):
        print(f"dashboard-preview: Prometheus warns about {expr!r}: {warning}", file=sys.stderr)
    return answer


def format_value(value: float, unit: str) -> str:
    def num(v: float) -> str:
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v / 1000:.3g}K"
        return f"{v:.3g}"

    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1:
            return f"{num(value * 1000)} ms"
        if abs(value) >= 120:
            return f"{num(value / 60)} min"
        return f"{num(value)} s"
    if unit == "percentunit":
        return f"{num(value * 100)}%"
    if unit == "reqps":
        return f"{num(value)} req/s"
    return num(value)


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """0 .. a round number >= top, in `count`-ish round steps (1, 2, 2.5, 5 x 10^k)."""
    if not top > 0:
        top = 1.0
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def time_ticks(start: float, end: float) -> list[float]:
    span = end - start
    every = next((s for s in (10, 15, 30, 60, 120, 300, 600, 1800, 3600) if span / s <= 7), 7200)
    first = math.ceil(start / every) * every
    return [t for t in range(int(first), int(end) + 1, every)]


def _segments(
    points: list[tuple[float, float | None]], max_gap: float
) -> Iterator[list[tuple[float, float]]]:
    """Runs of consecutive finite points; a missing sample or a NaN breaks the line, as in Grafana."""
    run: list[tuple[float, float]] = []
    last_t = None
    for t, v in points:
        if v is None or (last_t is not None and t - last_t > max_gap):
            if run:
                yield run
            run = []
        if v is not None:
            run.append((t, v))
        last_t = t
    if run:
        yield run


def render_panel(
    panel: dict[str, Any], targets: list[Target], start: float, end: float, width: int, height: int
) -> str:
    """One timeseries panel as an HTML block: title, an inline SVG plot (width x height px), a legend."""
    esc = html.escape
    pad_l, pad_r, pad_t, pad_b = 62, 12, 8, 22
    series = [s for t in targets for s in t.series]
    right_series = [s for s in series if s.right]
    if right_series:
        pad_r = 62
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    defaults = panel.get("fieldConfig", {}).get("defaults", {})

    def axis(group: list[Series]) -> list[float]:
        values = [v for s in group for _, v in s.points if v is not None]
        bottom = defaults.get("min", min(values, default=0.0))
        top = max(values, default=0.0)
        if defaults.get("max") is not None:
            top = defaults["max"]
        return nice_ticks(max(top - min(bottom, 0), 0.0) * 1.05)

    left_ticks = axis([s for s in series if not s.right])
    right_ticks = axis(right_series) if right_series else []

    def x_of(t: float) -> float:
        return pad_l + (t - start) / max(end - start, 1e-9) * plot_w

    def y_of(v: float, ticks: list[float]) -> float:
        return pad_t + plot_h - v / ticks[-1] * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="plot">']
    left_unit = next((s.unit for s in series if not s.right), targets[0].unit if targets else "short")
    for v in left_ticks:
        y = y_of(v, left_ticks)
        out.append(f'<line x1="{pad_l}" x2="{pad_l + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{esc(format_value(v, left_unit))}</text>"
        )
    if right_series:
        for v in right_ticks:
            label = format_value(v, right_series[0].unit)
            y = y_of(v, right_ticks)
            out.append(f'<text x="{pad_l + plot_w + 6}" y="{y + 4:.1f}">{esc(label)}</text>')
    for t in time_ticks(start, end):
        x = x_of(t)
        if not pad_l + 24 <= x <= pad_l + plot_w - 24:  # a label would run into the axis labels
            continue
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t}" y2="{pad_t + plot_h}" class="grid"/>')
        label = time.strftime("%H:%M:%S", time.localtime(t))
        out.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{label}</text>')
    thresholds = defaults.get("thresholds", {})
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") in ("line", "line+area", "dashed"):
        for step in thresholds.get("steps", []):
            value = step.get("value")
            if value is not None and value <= left_ticks[-1]:
                colour = THRESHOLD_COLOURS.get(step.get("color", ""), step.get("color", "#888"))
                y = y_of(value, left_ticks)
                out.append(
                    f'<line x1="{pad_l}" x2="{pad_l + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{esc(colour)}" stroke-dasharray="6 4" stroke-width="1"/>'
                )
    fill = defaults.get("custom", {}).get("fillOpacity", 0) / 100
    line_w = defaults.get("custom", {}).get("lineWidth", 1)
    legend = []
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        ticks = right_ticks if s.right else left_ticks
        for run in _segments(s.points, STEP_S * 1.5):
            xy = " ".join(f"{x_of(t):.1f},{y_of(v, ticks):.1f}" for t, v in run)
            if fill > 0 and len(run) > 1:
                base = y_of(0, ticks)
                area = f"{x_of(run[0][0]):.1f},{base:.1f} {xy} {x_of(run[-1][0]):.1f},{base:.1f}"
                out.append(f'<polygon points="{area}" fill="{colour}" fill-opacity="{fill}" stroke="none"/>')
            if len(run) == 1:
                x, y = x_of(run[0][0]), y_of(run[0][1], ticks)
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5" fill="{colour}"/>')
            else:
                out.append(
                    f'<polyline points="{xy}" fill="none" stroke="{colour}" stroke-width="{line_w + 0.5}"/>'
                )
        suffix = " (right axis)" if s.right else ""
        legend.append(f'<span><i style="background:{colour}"></i>{esc(s.label)}{suffix}</span>')
    if not series:
        out.append(
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{pad_t + plot_h / 2:.1f}" text-anchor="middle" '
            'class="nodata">No data</text>'
        )
    out.append("</svg>")
    return (
        f'<div class="title">{esc(panel.get("title", ""))}</div>'
        + "".join(out)
        + f'<div class="legend">{"".join(legend)}</div>'
    )


CSS = f"""
body {{ margin: 0; background: #111217; color: #ccccdc; width: {PAGE_W}px;
  font: 13px/1.3 Inter, "DejaVu Sans", Arial, sans-serif; }}
header {{ padding: 12px {GAP}px 4px; }}
header h1 {{ font-size: 18px; font-weight: 500; margin: 0 0 4px; color: #d8d9da; }}
header p {{ margin: 0; color: #8e8e9e; font-size: 12px; }}
.grid24 {{ display: grid; grid-template-columns: repeat(24, 1fr); padding: 0 {GAP / 2}px; }}
.row {{ grid-column: 1 / span 24; margin: 12px {GAP / 2}px 2px; font-size: 15px; font-weight: 500;
  color: #d8d9da; }}
.panel {{ margin: {GAP / 2}px; background: #181b1f; border: 1px solid #2a2d33; border-radius: 2px;
  padding: 6px 8px 8px; }}
.title {{ font-weight: 500; color: #d8d9da; margin-bottom: 4px; }}
svg.plot text {{ fill: #8e8e9e; font-size: 11px; }}
svg.plot text.nodata {{ font-size: 15px; fill: #6e6e7e; }}
svg.plot line.grid {{ stroke: #2c3035; stroke-width: 1; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 2px 14px; margin-top: 2px; font-size: 12px; }}
.legend i {{ display: inline-block; width: 14px; height: 4px; border-radius: 1px; margin: 0 6px 2px 0;
  vertical-align: middle; }}
"""


def render_page(
    dashboard: dict[str, Any],
    panels: list[tuple[dict[str, Any], list[Target]]],
    start: float,
    end: float,
    note: str,
) -> str:
    """The whole dashboard as one static page; `panels` in the dashboard's order (rows included)."""
    unit_w = (PAGE_W - GAP) / 24
    body = []
    for panel, targets in sorted(
        panels, key=lambda p: (p[0].get("gridPos", {}).get("y", 0), p[0].get("gridPos", {}).get("x", 0))
    ):
        pos = panel.get("gridPos", {"x": 0, "y": 0, "w": 24, "h": 8})
        if panel.get("type") == "row":
            body.append(f'<div class="row">{html.escape(panel.get("title", ""))}</div>')
            continue
        width = int(pos["w"] * unit_w - GAP - 18)  # less the panel's margins, padding and border
        block = render_panel(panel, targets, start, end, width, pos["h"] * ROW_H)
        body.append(f'<div class="panel" style="grid-column: {pos["x"] + 1} / span {pos["w"]}">{block}</div>')
    title = html.escape(dashboard.get("title", "dashboard"))
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>'
        f"<body><header><h1>{title}</h1><p>{html.escape(note)}</p></header>"
        f'<div class="grid24">{"".join(body)}</div></body></html>'
    )


# -- the live run -------------------------------------------------------------------------------------


def free_ports(n: int) -> int:
    """The first of `n` consecutive free loopback ports."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


class FlakyReceiver:
    """A webhook receiver on 127.0.0.1 that answers 500 (retry) or 410 (gone) now and then, else 204."""

    def __init__(self, rng: random.Random, fail: float = 0.3, gone: float = 0.04) -> None:
        lock = threading.Lock()
        self.counts: dict[int, int] = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    roll = rng.random()
                    status = 500 if roll < fail else 410 if roll < fail + gone else 204
                    receiver.counts[status] = receiver.counts.get(status, 0) + 1
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def prometheus(targets: dict[str, list[tuple[str, dict[str, str]]]], workdir: Path) -> Iterator[str]:
    """Prometheus scraping `targets` ({job: [(host:port, labels)]}) every SCRAPE_S; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("dashboard-preview: needs the prometheus binary (apt-get install -y prometheus)")
    port = free_ports(1)
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_S}s",
            "scrape_timeout": f"{SCRAPE_S}s",
            "evaluation_interval": f"{SCRAPE_S}s",
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [addr], "labels": labels} for addr, labels in found],
            }
            for job, found in targets.items()
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {proc.returncode}; see {workdir / 'prometheus.log'}"
                )
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus was not ready within 60 s")
            time.sleep(0.3)  # polling its readiness endpoint, bounded by the deadline
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def targets_down(prom_url: str) -> list[str]:
    with urllib.request.urlopen(f"{prom_url}/api/v1/targets?state=active", timeout=10) as resp:
        active = json.load(resp)["data"]["activeTargets"]
    return [
        f"{t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}" for t in active if t["health"] != "up"
    ]


class Load:
    """The varied client traffic, from a few threads; counts what it got."""

    def __init__(self, base_url: str, webhook_url: str, rng: random.Random) -> None:
        import httpx
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (180, 40, 40)).save(buf, format="PNG")
        self.image = buf.getvalue()
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.webhook_url = webhook_url
        self.rng = rng
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.statuses: dict[int, int] = {}

    def _count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def submit(self, n: int, webhook: bool) -> str | None:
        data = {"instruction": f"make it blue #{n}", "seed": str(n)}
        if webhook:
            data["webhook_url"] = self.webhook_url
        answer = self.http.post("/v1/edits", data=data, files={"image": ("in.png", self.image, "image/png")})
        self._count(answer.status_code)
        if answer.status_code >= 500:
            raise RuntimeError(f"submit answered {answer.status_code}: {answer.text[:300]}")
        if answer.status_code >= 300:
            return None
        job_id = answer.json()["id"]
        with self.lock:
            self.ids.append(job_id)
        return job_id

    def cancel(self, job_id: str) -> None:
        self._count(self.http.post(f"/v1/jobs/{job_id}/cancel").status_code)  # 409 once it has ended

    def read(self, job_id: str) -> None:
        self._count(self.http.get(f"/v1/jobs/{job_id}").status_code)

    def nonsense(self) -> None:
        """Client mistakes that dashboards show: an unknown job, an edit without an instruction."""
        self._count(self.http.get("/v1/jobs/job_doesnotexist").status_code)
        answer = self.http.post("/v1/edits", data={}, files={"image": ("in.png", self.image, "image/png")})
        self._count(answer.status_code)

    def run(self, duration_s: float, supervise: Any) -> None:
        rng = self.rng
        end = time.monotonic() + duration_s
        n = 0
        next_burst = time.monotonic() + 8
        with ThreadPoolExecutor(4) as pool:
            while time.monotonic() < end:
                supervise()
                if time.monotonic() >= next_burst:
                    size = rng.randint(15, 45)
                    burst = list(pool.map(lambda i: self.submit(i, rng.random() < 0.3), range(n, n + size)))
                    n += size
                    queued = [j for j in burst if j]
                    for job_id in rng.sample(queued, k=len(queued) // 6):  # some wait, some run, some ended
                        time.sleep(rng.uniform(0, 0.3))
                        self.cancel(job_id)
                    next_burst = time.monotonic() + rng.uniform(14, 26)
                    print(
                        f"dashboard-preview: burst of {size} submits, {len(queued) // 6} cancels", flush=True
                    )
                else:
                    if rng.random() < 0.7:
                        self.submit(n, rng.random() < 0.5)
                        n += 1
                    if self.ids and rng.random() < 0.5:
                        self.read(rng.choice(self.ids))
                    if rng.random() < 0.08:
                        self.nonsense()
                    if self.ids and rng.random() < 0.05:
                        self.cancel(rng.choice(self.ids[-5:]))
                    time.sleep(rng.uniform(0.2, 0.8))  # the trickle's pacing between bursts

    def close(self) -> None:
        self.http.close()


def screenshot(page: Path, png: Path) -> int:
    """Full-page PNG of `page` from headless Chromium; returns its size in bytes."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not (chromium and driver_bin):
        raise SystemExit(
            "dashboard-preview: needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={PAGE_W},1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        driver.get(page.resolve().as_uri())
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": PAGE_W, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "fromSurface": True}
        )
    finally:
        driver.quit()
    data = base64.b64decode(shot["data"])
    if len(data) > PNG_BUDGET:  # a palette PNG: the charts use few colours
        from PIL import Image

        image = (
            Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        )
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(data)
    return len(data)


def evaluate(
    dashboard: dict[str, Any], prom_url: str, start: float, end: float, rate_interval: str
) -> tuple[list[tuple[dict[str, Any], list[Target]]], list[str]]:
    """Every panel's targets evaluated over [start, end]; PromQLError on the first refused query.
    Also returns the queries that came back empty."""
    panels, empty = [], []
    for panel in dashboard["panels"]:
        targets = panel_targets(panel, rate_interval)
        for target in targets:
            target.series = series_from(query_range(prom_url, target.expr, start, end, STEP_S), target)
            finite = any(v is not None for s in target.series for _, v in s.points)
            if not finite:
                empty.append(f"{panel.get('title')} [{target.ref_id}]: {target.expr}")
        panels.append((panel, targets))
    return panels, empty


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of load (default 150)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--html", type=Path, help="also keep the page here")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--rate-interval", default="20s", help="what $__rate_interval becomes (default 20s)")
    parser.add_argument("--seed", type=int, default=7, help="of the load's random choices")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, TSDB)")
    args = parser.parse_args()

    from serve.embedded import EmbeddedPlatform

    dashboard = json.loads(args.dashboard.read_text())
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="varedit-dashboard-"))
    for name in [k for k in os.environ if k.startswith("VAREDIT_")]:
        del os.environ[name]  # the platform's own Redis, SQLite and local storage under workdir
    env = {
        "VAREDIT_MODEL_PATH": "fake://?scales=10&scale_ms=50",
        "VAREDIT_MODELS": '["tiny"]',
        "VAREDIT_MAX_BATCH": "2",
        "VAREDIT_RATE_LIMIT": "100000/minute",
        "VAREDIT_MAX_IN_FLIGHT": "100000",
        "VAREDIT_ALLOW_PRIVATE_URLS": "true",  # the webhook receiver is on 127.0.0.1
        "VAREDIT_WEBHOOK_RETRY_S": "[1, 2, 4]",  # retries within the picture's few minutes
        "VAREDIT_LOG_JSON": "true",
    }
    receiver = FlakyReceiver(random.Random(args.seed + 1))
    edit_workers = 2
    try:
        with EmbeddedPlatform(
            port=0,
            data_dir=workdir / "data",
            extra_env=env,
            edit_workers=edit_workers,
            worker_metrics_port=free_ports(edit_workers + 1),
        ) as plat:
            print(f"dashboard-preview: starting the platform (data and logs in {workdir})", flush=True)
            plat.wait_ready(timeout_s=180)
            hostport = lambda url: urllib.parse.urlsplit(url).netloc  # noqa: E731
            scrape = {
                "varedit-api": [(hostport(plat.url), {})],
                "varedit-beat": [(hostport(plat.job_metrics_url), {})],
                "varedit-workers": [
                    (hostport(u), {"worker": n}) for n, u in plat.worker_metrics_urls.items()
                ],
            }
            with prometheus(scrape, workdir) as prom_url:
                print(f"dashboard-preview: Prometheus at {prom_url}, scraping every {SCRAPE_S} s", flush=True)
                start = time.time()
                time.sleep(10)  # an idle baseline before the load
                if down := targets_down(prom_url):
                    raise RuntimeError("scrape targets down: " + "; ".join(down))
                load = Load(plat.url, receiver.url, rng)
                try:
                    load.run(args.duration, plat.check_children)
                finally:
                    load.close()
                print(
                    f"dashboard-preview: load done: HTTP {dict(sorted(load.statuses.items()))}, "
                    f"webhook answers {dict(sorted(receiver.counts.items()))}; letting it drain",
                    flush=True,
                )
                for _ in range(20):  # the queue drains and webhook retries settle while Prometheus scrapes
                    plat.check_children()
                    time.sleep(1)
                if down := targets_down(prom_url):
                    raise RuntimeError("scrape targets down: " + "; ".join(down))
                end = time.time()
                panels, empty = evaluate(dashboard, prom_url, start, end, args.rate_interval)
        note = (
            f"The dashboard's own queries ($model = .*, $__rate_interval = {args.rate_interval}) "
            "evaluated by "
            f"Prometheus {prometheus_version()} over {end - start:.0f} s of the embedded platform "
            f"(simulated model, {edit_workers} edit workers, scraped every {SCRAPE_S} s), drawn by "
            "scripts/dashboard_preview.py — not Grafana's renderer."
        )
        page = args.html or workdir / "dashboard.html"
        page.write_text(render_page(dashboard, panels, start, end, note))
        size = screenshot(page, args.out)
        kept = f"; page: {page}" if args.html else ""
        print(f"dashboard-preview: {args.out} ({size / 1024:.0f} KiB){kept}")
        for line in empty:
            print(f"dashboard-preview: NO DATA: {line}", file=sys.stderr)
        return 0
    finally:
        receiver.close()
        if args.keep:
            print(f"dashboard-preview: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def prometheus_version() -> str:
    binary = shutil.which("prometheus") or "prometheus"
    first = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines() or ["?"]
    match = re.search(r"version (\S+)", first[0])
    return match.group(1).split("+")[0] if match else "?"


if __name__ == "__main__":
    sys.exit(main())
