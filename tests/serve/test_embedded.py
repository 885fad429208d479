"""End to end on the embedded default: `varedit-serve` (python -m serve)
starts SQLite, local storage, its own Redis, a worker running the REAL bundled VAREdit pipeline (trained
models/varedit-shapes-64), beat and the API; clients talk HTTP to it.
Also runs scripts/demo.sh, the README's "run the main job" command, the same way a person would."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from standardwebhooks.webhooks import Webhook

from varedit_client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "assets" / "sample.png"
JOBS = 20
READY_S = 180.0
DEADLINE_S = 120.0


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The defaults a user gets: no VAREDIT_* set, so the bundled model and SQLite/local storage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    env.update({"VAREDIT_DATA_DIR": str(data_dir), "VAREDIT_LOG_JSON": "true", "PYTHONUNBUFFERED": "1"})
    return env | extra


def _mean_rgb(image: Image.Image) -> tuple[float, ...]:
    return tuple(np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0))


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment contains `marker` (our unique data folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_gone(marker: str, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling /proc for stragglers, bounded by the deadline
    return left


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`python -m serve` as a person runs it, stopped with SIGTERM at the end."""
    data_dir = tmp_path_factory.mktemp("embedded") / "data"
    ready_file = data_dir.parent / "ready.json"
    out = open(data_dir.parent / "stdout.txt", "wb")  # noqa: SIM115
    cmd = [
        sys.executable,
        "-m",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--ready-file",
        str(ready_file),
    ]
    # the one non-default: client-chosen URLs (the test's webhook receiver) may be on 127.0.0.1
    env = _env(data_dir, VAREDIT_ALLOW_PRIVATE_URLS="true")
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    info: dict = {"proc": proc, "data_dir": data_dir, "stdout": data_dir.parent / "stdout.txt"}
    try:
        deadline = time.monotonic() + READY_S
        while not ready_file.exists():
            assert proc.poll() is None, info["stdout"].read_text()
            assert time.monotonic() < deadline, "varedit-serve was not ready in time"
            time.sleep(0.1)  # polling the ready file under a deadline
        info.update(json.loads(ready_file.read_text()))
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                info["exit_code"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        for pid in _processes_with(str(data_dir)):  # never leave anything behind, even on failure
            os.kill(pid, signal.SIGKILL)


def test_embedded_default_runs_twenty_http_jobs_with_the_bundled_model(embedded: dict) -> None:
    # given the embedded platform (its own Redis, SQLite, local storage, the bundled trained model)
    data_dir: Path = embedded["data_dir"]
    assert (data_dir / "varedit.db").exists()
    source = SAMPLE.read_bytes()
    with Client(embedded["url"]) as client:
        models = client.http.get("/v1/models").json()
        assert any(m["ready_workers"] >= 1 for m in models["data"]), models
        # when 20 jobs are submitted over HTTP
        ids = [client.submit(source, f"edit number {i}", seed=i)["id"] for i in range(JOBS)]
        # then each succeeds once and its result decodes, at the input's size
        for job_id in ids:
            job = client.wait(job_id, timeout_s=DEADLINE_S)
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 1
            assert job["progress"]["scale"] == job["progress"]["scales"] >= 2
            image = Image.open(io.BytesIO(client.result(job_id)))
            image.load()
            assert image.size == Image.open(SAMPLE).size
    # results are files in the local storage folder, one per job
    assert len(list((data_dir / "objects" / "jobs").glob("*/result-1.png"))) == JOBS
    # the worker log shows each job generated exactly once (the line is written just after the commit
    # the client saw, so read until all are there or the deadline passes)
    log_file = data_dir / "logs" / "edit0-shapes-64.log"
    deadline = time.monotonic() + DEADLINE_S
    while True:
        succeeded = Counter(
            json.loads(line)["job_id"]
            for line in log_file.read_text().splitlines()
            if line.startswith("{") and '"edit_succeeded"' in line
        )
        if sum(succeeded.values()) >= JOBS or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling the log file under a deadline
    assert [succeeded[j] for j in ids] == [1] * JOBS


def test_beat_exports_the_queue_gauges_and_the_api_does_not(embedded: dict) -> None:
    gauges = httpx.get(embedded["job_metrics"], timeout=10).text
    assert "varedit_queue_depth{" in gauges and "varedit_workers_ready{" in gauges
    ready = [line for line in gauges.splitlines() if line.startswith("varedit_workers_ready{")]
    assert any(float(line.rsplit(" ", 1)[1]) >= 1 for line in ready), ready
    assert "varedit_queue_depth" not in httpx.get(f"{embedded['url']}/metrics", timeout=10).text
    # on a laptop the gauges listen on the loopback address only
    port = int(embedded["job_metrics"].rsplit(":", 1)[1].split("/")[0])
    assert _listening_addresses(port) == {"127.0.0.1"}


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port` (/proc/net/tcp: little-endian hex)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_webhooks_arrive_signed_with_the_data_dirs_secret(embedded: dict, webhook_receiver) -> None:
    with Client(embedded["url"]) as client:
        job = client.submit(
            SAMPLE.read_bytes(), "remove the red circle", seed=1, webhook_url=webhook_receiver.url
        )
        assert client.wait(job["id"], timeout_s=DEADLINE_S)["status"] == "succeeded"
        (_, running_headers, running), (_, headers, body) = webhook_receiver.wait_for(2, DEADLINE_S)
        log = client.http.get(f"/v1/jobs/{job['id']}/webhooks").json()["data"]
    secret = (embedded["data_dir"] / "webhook-secret").read_text().strip()
    assert Webhook(secret).verify(running, running_headers)["type"] == "job.running"
    event = Webhook(secret).verify(body, headers)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
    assert event["data"]["result"]["url"] == f"/v1/jobs/{job['id']}/result"
    # the delivery log says so once the worker has recorded the answers
    assert [d["event"] for d in log] == ["job.running", "job.succeeded"]


def test_the_web_page_edits_the_sample_in_a_real_browser(embedded: dict, browser, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, DEADLINE_S)
    browser.get(embedded["url"] + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))  # models came from the API
    browser.find_element(By.ID, "image").send_keys(str(SAMPLE))
    browser.find_element(By.ID, "instruction").send_keys("remove the red circle")
    browser.find_element(By.CSS_SELECTOR, "details summary").click()
    for field, value in (("seed", "1"), ("cfg", "2"), ("tau", "0.3")):
        browser.find_element(By.ID, field).send_keys(value)
    assert browser.find_element(By.ID, "before").get_property("naturalWidth") == 64  # the local preview
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "succeeded")
    wait.until(lambda d: d.find_element(By.ID, "after").get_property("naturalWidth") == 64)
    assert browser.find_element(By.ID, "scale").text == "scale 5 of 5"
    assert browser.find_element(By.ID, "progress").get_property("value") == 1
    # what the page shows is the job's result, fetched by the page itself
    job_id = browser.find_element(By.ID, "job-id").text
    with Client(embedded["url"]) as client:
        job = client.get(job_id)
    assert (job["status"], job["params"]["seed"]) == ("succeeded", 1)
    assert job["instruction"] == "remove the red circle"
    # bad input is shown with its error code, not swallowed
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    browser.find_element(By.ID, "image").send_keys(str(not_an_image))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text.startswith("invalid_image:"))


def _events(http: httpx.Client, path: str) -> list[tuple[str, dict]]:
    """A job's Server-Sent Events, from the stream's start to its end (the job is terminal)."""
    events, name = [], None
    with http.stream("GET", path) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_previews_sharpen_scale_by_scale_over_http(embedded: dict) -> None:
    # given a job that asks for previews, edited by the bundled model (5 scales at 64 px)
    with httpx.Client(base_url=embedded["url"], timeout=DEADLINE_S) as http:
        image = {"image": ("sample.png", SAMPLE.read_bytes(), "image/png")}
        fields = {"instruction": "remove the red circle", "seed": "2", "previews": "true"}
        job = http.post("/v1/edits", files=image, data=fields).json()
        # when a client follows its events
        events = _events(http, job["urls"]["events"])
        previews = [data for name, data in events if name == "preview"]
        shown = [http.get(p["url"]) for p in previews]
        result = http.get(job["urls"]["result"]).content
    # then each scale's preview is announced once, in order, before the job ends
    assert [(p["scale"], p["scales"]) for p in previews] == [(k, 5) for k in range(1, 6)]
    assert events[-1][0] == "status" and events[-1][1]["status"] == "succeeded"
    assert [r.status_code for r in shown] == [200] * 5
    # they come closer to the result at every scale, and the last one is the result (64 px, its own size)
    distance = [float(np.abs(_pixels(r.content) - _pixels(result)).mean()) for r in shown]
    assert all(a > b for a, b in zip(distance, distance[1:], strict=False)), distance
    assert distance[-1] == 0


# Records, in the page, which image the after figure has loaded: a preview's "k/K", or "final".
RECORD_AFTER_LOADS = """
window.afterLoads = [];
document.getElementById("after").addEventListener("load", (e) => {
  window.afterLoads.push(e.target.dataset.preview || "final");
});
"""


def test_the_web_page_shows_previews_before_the_final_image(embedded: dict, browser) -> None:
    wait = WebDriverWait(browser, DEADLINE_S)
    browser.get(embedded["url"] + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    assert browser.find_element(By.ID, "previews").is_selected()  # on by default
    browser.execute_script(RECORD_AFTER_LOADS)
    browser.find_element(By.ID, "image").send_keys(str(SAMPLE))
    browser.find_element(By.ID, "instruction").send_keys("remove the red circle")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: (d.execute_script("return window.afterLoads") or [None])[-1] == "final")
    # every scale's preview was on screen, in order, before the result replaced the last one
    assert browser.execute_script("return window.afterLoads") == [f"{k}/5" for k in range(1, 6)] + ["final"]
    assert browser.find_element(By.ID, "status").text == "succeeded"
    assert browser.find_element(By.ID, "after-caption").text == "After"
    assert browser.find_element(By.ID, "after").get_property("naturalWidth") == 64


def test_the_page_offers_the_models_examples_and_edits_one_in_one_click(embedded: dict, browser) -> None:
    wait = WebDriverWait(browser, DEADLINE_S)
    browser.get(embedded["url"] + "/")
    # what the bundled model understands, and its examples, come from its folder through /v1/models
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples button"))
    assert "six edit kinds" in browser.find_element(By.ID, "model-note").text
    samples = browser.find_elements(By.CSS_SELECTOR, "#samples button")
    assert len(samples) == 6
    wait.until(
        lambda d: all(
            i.get_property("naturalWidth") == 64 for i in d.find_elements(By.CSS_SELECTOR, "#samples img")
        )
    )
    samples[0].click()
    wait.until(lambda d: d.find_element(By.ID, "instruction").get_property("value") == samples[0].text)
    wait.until(lambda d: d.find_element(By.ID, "before").get_property("naturalWidth") == 64)
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "succeeded")
    wait.until(lambda d: d.find_element(By.ID, "after").get_property("naturalWidth") == 64)
    assert not browser.find_element(By.ID, "error").is_displayed()
    # the favicon is served from here, as the strict Content-Security-Policy wants
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    assert icon == embedded["url"] + "/static/favicon.svg"
    assert httpx.get(icon).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_render_with_nothing_fetched_from_elsewhere(embedded: dict, browser, page: str) -> None:
    wait = WebDriverWait(browser, DEADLINE_S)
    browser.get(embedded["url"] + page)
    # the rendered docs show the operations, so the UI's script ran and read /openapi.json
    wait.until(lambda d: "createEdit" in d.page_source or "Submit an edit" in d.page_source)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    elsewhere = {url for url in fetched if not url.startswith(embedded["url"])}
    # Redoc's footer names a logo on its CDN; the page's policy blocks it before any request is made
    blocked = {"https://cdn.redoc.ly/redoc/logo-mini.svg"} if page == "/redoc" else set()
    assert elsewhere <= blocked, fetched
    policy = httpx.get(embedded["url"] + page).headers["content-security-policy"]
    assert "img-src 'self' data:" in policy and "default-src 'self'" in policy


def test_varedit_serve_submit_command_waits_and_saves_the_result(embedded: dict, tmp_path: Path) -> None:
    out = tmp_path / "edited.png"
    cmd = [
        sys.executable,
        "-m",
        "serve",
        "submit",
        str(SAMPLE),
        "make the circle blue",
        "--wait",
        "-o",
        str(out),
        "--url",
        embedded["url"],
        "--seed",
        "3",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "succeeded" in done.stderr
    Image.open(out).load()


def test_sigterm_stops_every_child(embedded: dict) -> None:
    # runs last in this module: stop the platform the way Ctrl-C/systemd would
    proc: subprocess.Popen = embedded["proc"]
    children = embedded["children"]
    assert len(children) == 4  # edit worker, light worker (+beat), api, redis-server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "stopped" in embedded["stdout"].read_text()
    assert _wait_gone(str(embedded["data_dir"])) == []


def test_demo_script_edits_the_sample_through_the_api(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo-data"
    out = tmp_path / "out" / "demo.png"
    env = _env(data_dir) | {"DEMO_OUT": str(out)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the last line says where the result is, after the platform has stopped
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == f"demo: result saved to {out}", lines
    assert "varedit-serve: stopped" in lines
    result = Image.open(out).convert("RGB")
    assert result.size == Image.open(SAMPLE).size
    # and the edit is real: "remove the red circle" turned the circle's area into the white background
    # and left the blue square where it was (regions from scripts/make_sample_image.py: cells 3 and 5)
    circle, square = (2, 26, 20, 38), (44, 26, 62, 38)
    red_before, red_after = (
        _mean_rgb(Image.open(SAMPLE).convert("RGB").crop(circle)),
        _mean_rgb(result.crop(circle)),
    )
    assert red_before[0] - red_before[1] > 100 and red_after[0] - red_after[1] < 40, (red_before, red_after)
    assert min(red_after) > 180, red_after  # background, not a dark smear
    blue_after = _mean_rgb(result.crop(square))
    assert blue_after[2] - blue_after[0] > 80, blue_after
    assert "ready: http://127.0.0.1:" in done.stdout
    assert _wait_gone(str(data_dir)) == []  # the demo stopped everything it started
