"""API keys: bearer auth, each key seeing only its own jobs, revocation, per-key limits (429 with
Retry-After), the `varedit-serve keys` commands, and webhooks signed with the key's own secret."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from api.main import create_app
from jobs import keys, outbox, queries, transitions
from jobs.db import session_scope
from jobs.settings import Settings
from jobs.workers import ModelFacts
from tests.api.test_edits import count_jobs, image_bytes, stored_objects
from tests.conftest import ApiHarness, live_server, record_tiny_facts, run_with_stdout_closed
from worker.runtime import Runtime, install_runtime, reset_runtime
from worker.tasks import webhooks as webhook_tasks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keyed(api_settings: Settings) -> Iterator[ApiHarness]:
    with ApiHarness(api_settings.model_copy(update={"auth": "api_key"})) as harness:
        yield harness


@pytest.fixture
def new_key(keyed: ApiHarness) -> Callable[..., tuple[str, str]]:
    """``new_key(**limits) -> (key id, bearer header value)``."""

    def make(**limits) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        with session_scope(keyed.sessions) as session:
            new = keys.create(session, "test", **limits)
            return new.key.id, f"Bearer {new.token}"

    return make


def _submit(harness: ApiHarness, auth: str | None, **fields: str):  # type: ignore[no-untyped-def]
    headers = {"Authorization": auth} if auth else {}
    return harness.client.post(
        "/v1/edits",
        data={"instruction": "x", **fields},
        files={"image": ("a.png", image_bytes(), "image/png")},
        headers=headers,
    )


@pytest.mark.parametrize(
    "auth", [None, "Bearer", "Basic dXNlcjpwdw==", "Bearer vsk_nope_nope", "Bearer garbage"]
)
def test_requests_without_a_valid_key_are_refused(keyed: ApiHarness, auth: str | None) -> None:
    response = _submit(keyed, auth)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert count_jobs(keyed) == 0 and stored_objects(keyed) == []
    assert keyed.client.get("/v1/jobs", headers={"Authorization": auth} if auth else {}).status_code == 401


def test_a_key_sees_only_its_own_jobs(keyed: ApiHarness, new_key) -> None:  # type: ignore[no-untyped-def]
    alice_id, alice = new_key()
    _, bob = new_key()
    job = _submit(keyed, alice).json()
    assert keyed.client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": alice}).status_code == 200
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/result", f"/v1/jobs/{job['id']}/webhooks"):
        assert keyed.client.get(path, headers={"Authorization": bob}).status_code == 404
    assert (
        keyed.client.post(f"/v1/jobs/{job['id']}/cancel", headers={"Authorization": bob}).status_code == 404
    )
    assert keyed.client.get("/v1/jobs", headers={"Authorization": bob}).json()["data"] == []
    listed = keyed.client.get("/v1/jobs", headers={"Authorization": alice}).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    with keyed.sessions() as session:
        assert queries.get_job(session, job["id"]).owner == alice_id


def test_a_revoked_key_stops_at_once(keyed: ApiHarness, new_key) -> None:  # type: ignore[no-untyped-def]
    key_id, auth = new_key()
    assert _submit(keyed, auth).status_code == 202
    with session_scope(keyed.sessions) as session:
        keys.revoke(session, key_id)
    assert _submit(keyed, auth).status_code == 401


def test_rate_limit_answers_429_with_retry_after(keyed: ApiHarness, new_key) -> None:  # type: ignore[no-untyped-def]
    _, auth = new_key(rate_limit="2/minute")
    assert [_submit(keyed, auth).status_code for _ in range(2)] == [202, 202]
    response = _submit(keyed, auth)
    assert (response.status_code, response.json()["error"]["code"]) == (429, "rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert count_jobs(keyed) == 2
    _, other = new_key(rate_limit="2/minute")  # limits are per key
    assert _submit(keyed, other).status_code == 202


def test_in_flight_cap_answers_429(keyed: ApiHarness, new_key) -> None:  # type: ignore[no-untyped-def]
    _, auth = new_key(max_in_flight=1)
    first = _submit(keyed, auth).json()
    response = _submit(keyed, auth)
    assert (response.status_code, response.json()["error"]["code"]) == (429, "too_many_jobs_in_flight")
    assert response.headers["retry-after"]
    keyed.client.post(f"/v1/jobs/{first['id']}/cancel", headers={"Authorization": auth})  # one ends
    assert _submit(keyed, auth).status_code == 202


@pytest.mark.parametrize("limits", [{"max_in_flight": 0}, {"max_in_flight": -3}, {"rate_limit": "0/minute"}])
def test_a_key_no_request_could_pass_is_refused(keyed: ApiHarness, limits) -> None:  # type: ignore[no-untyped-def]
    with session_scope(keyed.sessions) as session, pytest.raises(ValueError, match="allows no"):
        keys.create(session, "test", **limits)
    with keyed.sessions() as session:
        assert keys.all_keys(session) == []


def test_a_key_signs_webhooks_without_a_deployment_secret(api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"auth": "api_key", "webhook_secrets": []})
    with ApiHarness(settings) as harness:
        with session_scope(harness.sessions) as session:
            token = f"Bearer {keys.create(session, 'hooks').token}"
        response = _submit(harness, token, webhook_url="https://hooks.example.com/x")
        assert response.status_code == 202, response.text


def test_webhooks_are_signed_with_the_owning_keys_secret(
    make_settings, sqlite_url: str, redis_url: str, webhook_receiver
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, allow_private_urls=True)
    rt = Runtime(settings=settings, worker_id="light", hostname=socket.gethostname(), pid=os.getpid())
    install_runtime(rt)
    try:
        with session_scope(rt.sessions) as session:
            key = keys.create(session, "hooks").key
            key_id, secret = key.id, key.webhook_secret
            job_id = transitions.new_job_id()
            transitions.submit(
                session,
                job_id=job_id,
                owner=key_id,
                source_key="k",
                source_content_type="image/png",
                spec=transitions.EditSpec(
                    "x", "tiny", 32, 1, 3.0, 0.1, 3600, webhook_url=webhook_receiver.url
                ),
            )
            transitions.cancel(session, job_id)
        with session_scope(rt.sessions) as session:
            [handover] = outbox.claim_due(session, 60)
        assert webhook_tasks.deliver_webhook(*handover) == "delivered"
        [(_, headers, body)] = webhook_receiver.wait_for(1)
        assert Webhook(secret).verify(body, headers)["type"] == "job.canceled"
        with pytest.raises(Exception, match="signature"):
            Webhook(settings.webhook_secrets[0]).verify(body, headers)  # not the deployment's secret
    finally:
        reset_runtime()


@pytest.mark.slow
def test_keys_commands(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    env["VAREDIT_DATA_DIR"] = str(tmp_path / "data")
    (tmp_path / "data").mkdir()

    def keys_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serve", "keys", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = keys_cmd("create", "ci", "--rate-limit", "10/minute")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["token"].startswith(f"vsk_{created['id']}_") and created["webhook_secret"].startswith(
        "whsec_"
    )
    listed = json.loads(keys_cmd("list").stdout)
    assert [(k["id"], k["rate_limit"]) for k in listed] == [(created["id"], "10/minute")]
    assert "token" not in listed[0]
    for unbuffered in (True, False):  # `keys list | head -3`: before, a BrokenPipeError traceback
        piped = run_with_stdout_closed(
            [sys.executable, "-m", "serve", "keys", "list"], env, unbuffered, cwd=ROOT
        )
        assert piped.returncode == 141 and "Broken" not in piped.stderr and "Traceback" not in piped.stderr
    rotated = json.loads(keys_cmd("rotate-webhook-secret", created["id"]).stdout)
    assert rotated["webhook_secret"] != created["webhook_secret"]
    assert json.loads(keys_cmd("revoke", created["id"]).stdout)["revoked_at"]
    bad = keys_cmd("create", "x", "--rate-limit", "lots")
    assert bad.returncode == 2 and "lots" in bad.stderr
    missing = keys_cmd("revoke", "nope")
    assert missing.returncode == 2 and "no API key" in missing.stderr


def test_production_refuses_to_run_without_auth(make_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="VAREDIT_AUTH"):
        make_settings(environment="production", database_url="postgresql://x@localhost/db")


def test_keys_survive_a_rotation_with_both_secrets(keyed: ApiHarness, new_key) -> None:  # type: ignore[no-untyped-def]
    key_id, _ = new_key()
    with session_scope(keyed.sessions) as session:
        first = keys.get(session, key_id).webhook_secret
        rotated = keys.rotate_webhook_secret(session, key_id)
        assert rotated.webhook_secrets == [rotated.webhook_secret, first]


def test_authentication_takes_no_worker_thread(keyed: ApiHarness, new_key, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    from types import SimpleNamespace

    import anyio.to_thread
    from fastapi.security import HTTPAuthorizationCredentials

    from api.deps import current_principal

    def no_threads(*_: object, **__: object) -> None:
        raise AssertionError("authentication asked for a worker thread")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_threads)
    key_id, auth = new_key()
    request = SimpleNamespace(app=keyed.app)
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=auth.removeprefix("Bearer "))
    principal = asyncio.run(current_principal(request, keyed.settings, credentials))  # type: ignore[arg-type]
    assert principal.id == key_id


@pytest.mark.e2e
def test_the_page_loads_the_models_once_a_key_is_typed_in(keyed: ApiHarness, new_key, browser) -> None:  # type: ignore[no-untyped-def]
    """With keys on, the page opens without one (401 shown); the key typed into its field loads the
    models, their recommended values, note and examples, without reloading the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    keyed.storage.put("models/tiny/examples/0", image_bytes(), "image/png")
    example = {
        "instruction": "make the circle blue",
        "image_key": "models/tiny/examples/0",
        "content_type": "image/png",
    }
    facts = ModelFacts("tiny", [32], {"cfg": 3.0, "tau": 0.1}, "Shapes only.", [example])
    record_tiny_facts(keyed.sessions, facts)
    token = new_key()[1].removeprefix("Bearer ")
    with live_server(create_app(keyed.settings)) as port:
        wait = WebDriverWait(browser, 30)
        browser.get(f"http://127.0.0.1:{port}/")
        error = browser.find_element(By.ID, "error")
        wait.until(lambda _: error.is_displayed())
        assert error.text.startswith("unauthorized:")
        browser.find_element(By.CSS_SELECTOR, "details summary").click()
        browser.find_element(By.ID, "api-key").send_keys(token, Keys.TAB)
        wait.until(lambda _: browser.find_element(By.ID, "model-note").text == "Shapes only.")
        options = browser.find_elements(By.CSS_SELECTOR, "#model option")
        assert [o.get_attribute("value") for o in options] == ["tiny"]
        assert browser.find_element(By.ID, "cfg").get_attribute("placeholder") == "default 3"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#samples button")) == 1
        assert not error.is_displayed()
