"""Webhooks: messages written with each state change, the retry schedule, Standard Webhooks signatures,
the address guard, the tasks, and the delivery-log routes. Deliveries go to a real HTTP endpoint on
127.0.0.1 (`LocalHTTPServer`); the database ones run on SQLite and PostgreSQL."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from jobs import outbox, queries, reapers, transitions
from jobs.db import session_scope
from jobs.errors import JobNotTerminal, NoWebhook
from jobs.models import DeliveryStatus, JobStatus, WebhookDelivery, utcnow
from jobs.netguard import guarded_pool, is_public
from jobs.outbox import Outcome, Verdict
from jobs.settings import Settings
from jobs.transitions import ResultMeta
from tests.api.test_edits import image_bytes, post_json
from tests.conftest import WEBHOOK_SECRET, ApiHarness, LocalHTTPServer
from worker import metrics
from worker.job_gauges import registry_for
from worker.runtime import Runtime, install_runtime, reset_runtime
from worker.tasks import webhooks as webhook_tasks
from worker.webhook_sender import send

HOOK = "https://hooks.example.com/varedit"
RESULT = ResultMeta(key="jobs/x/result-1.png", content_type="image/png", width=32, height=32, bytes=100)


def _messages(sessions: sessionmaker[Session], job_id: str) -> list[WebhookDelivery]:
    with sessions() as session:
        return outbox.deliveries(session, job_id)


def _run_to_success(sessions: sessionmaker[Session], job_id: str) -> None:
    with session_scope(sessions) as session:
        job = transitions.claim(session, job_id, "w1", lease_s=60)
        assert job is not None
    with session_scope(sessions) as session:
        assert transitions.finish(session, job_id, 1, RESULT)


# -- the outbox -----------------------------------------------------------------------------------


def test_each_state_change_writes_its_message_with_the_job_as_it_was(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK)
    assert _messages(sessions, job_id) == []  # accepting a job is the answer to the request itself
    _run_to_success(sessions, job_id)
    running, succeeded = _messages(sessions, job_id)
    assert [running.event, succeeded.event] == ["job.running", "job.succeeded"]
    assert running.payload["type"] == "job.running" and running.payload["data"]["status"] == "running"
    assert succeeded.payload["data"]["status"] == "succeeded"
    assert succeeded.payload["data"]["result"]["width"] == 32
    assert running.message_id != succeeded.message_id
    assert all(
        m.status is DeliveryStatus.PENDING and m.url == HOOK and m.attempts == 0 for m in (running, succeeded)
    )


def test_only_subscribed_events_are_sent(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK, webhook_events=["job.succeeded", "job.failed"])
    _run_to_success(sessions, job_id)
    assert [m.event for m in _messages(sessions, job_id)] == ["job.succeeded"]
    plain = submit_job()
    _run_to_success(sessions, plain)
    assert _messages(sessions, plain) == []


def test_a_rolled_back_change_leaves_no_message(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK)
    with pytest.raises(RuntimeError), session_scope(sessions) as session:
        assert transitions.claim(session, job_id, "w1", lease_s=60) is not None
        raise RuntimeError("crash before commit")
    assert _messages(sessions, job_id) == []
    with sessions() as session:
        assert queries.get_job(session, job_id).status is JobStatus.QUEUED


def test_cancel_expiry_and_the_reaper_announce_terminal_states(sessions, submit_job) -> None:
    canceled = submit_job(webhook_url=HOOK)
    with session_scope(sessions) as session:
        transitions.cancel(session, canceled)
    late = submit_job(webhook_url=HOOK, start_timeout_s=1)
    with session_scope(sessions) as session:
        assert reapers.expire_unstarted(session, now=utcnow() + timedelta(seconds=5)) == [late]
    lost = submit_job(webhook_url=HOOK)
    with session_scope(sessions) as session:
        transitions.claim(session, lost, "w1", lease_s=1)
    with session_scope(sessions) as session:
        reapers.reap_expired_leases(session, max_attempts=1, now=utcnow() + timedelta(seconds=5))
    assert [m.event for m in _messages(sessions, canceled)] == ["job.canceled"]
    assert [m.event for m in _messages(sessions, late)] == ["job.expired"]
    assert [m.event for m in _messages(sessions, lost)] == ["job.running", "job.failed"]
    assert _messages(sessions, lost)[1].payload["data"]["error"]["code"] == "lease_expired"


def test_a_claimed_message_is_held_until_its_attempt_could_have_ended(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK, webhook_events=["job.running"])
    with session_scope(sessions) as session:
        transitions.claim(session, job_id, "w1", lease_s=60)
    now = utcnow()
    with session_scope(sessions) as session:
        [first] = outbox.claim_due(session, hold_s=60, now=now)
    with session_scope(sessions) as session:
        assert outbox.claim_due(session, hold_s=60, now=now + timedelta(seconds=59)) == []
    with session_scope(sessions) as session:  # the worker that held it died: due again
        assert outbox.claim_due(session, hold_s=60, now=now + timedelta(seconds=61)) == [first]


def test_new_messages_are_handed_over_after_commit_and_reserved_meanwhile(sessions, submit_job) -> None:
    sent: list[str] = []
    outbox.send_after_commit(sessions, sent.append, hold_s=60)
    job_id = submit_job(webhook_url=HOOK, webhook_events=["job.running"])
    with pytest.raises(RuntimeError), session_scope(sessions) as session:
        transitions.claim(session, job_id, "w1", lease_s=60)
        raise RuntimeError("crash before commit")
    with session_scope(sessions) as session:
        transitions.claim(session, job_id, "w1", lease_s=60)
        assert sent == []  # never before the commit
    [message] = _messages(sessions, job_id)
    assert sent == [message.id]  # once, and nothing from the rolled-back try
    now = utcnow()
    with session_scope(sessions) as session:  # reserved for the worker it was handed to
        assert outbox.claim_due(session, hold_s=60, now=now) == []
    with session_scope(sessions) as session:  # ...until the reservation runs out (hand-over lost)
        assert outbox.claim_due(session, hold_s=60, now=now + timedelta(seconds=61)) == [(message.id, 0)]


def test_a_failed_hand_over_does_not_undo_the_change(sessions, submit_job) -> None:
    def broker_down(delivery_id: str) -> None:
        raise ConnectionError("broker down")

    outbox.send_after_commit(sessions, broker_down, hold_s=60)
    job_id = submit_job(webhook_url=HOOK)
    _run_to_success(sessions, job_id)
    with sessions() as session:
        assert queries.get_job(session, job_id).status is JobStatus.SUCCEEDED
    assert len(_messages(sessions, job_id)) == 2


def _record(sessions, delivery_id: str, outcome: Outcome, schedule=(5.0, 60.0), now=None):  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        attempts = session.get(WebhookDelivery, delivery_id).attempts
        return outbox.record_outcome(
            session, delivery_id, attempts, outcome, schedule, now=now, rng=random.Random(0)
        )


def _one_message(sessions, submit_job) -> str:  # type: ignore[no-untyped-def]
    job_id = submit_job(webhook_url=HOOK, webhook_events=["job.running"])
    with session_scope(sessions) as session:
        transitions.claim(session, job_id, "w1", lease_s=60)
    return _messages(sessions, job_id)[0].id


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite has no row locks
def test_dispatch_passes_over_a_message_a_frozen_worker_is_settling(sessions, submit_job) -> None:
    """A webhook worker frozen while it records an attempt keeps that message's row locked; the
    dispatcher hands over the other due messages instead of waiting on it (and freezing beside it)."""
    frozen, other = _one_message(sessions, submit_job), _one_message(sessions, submit_job)
    due: list[list[outbox.Handover]] = []

    def dispatch() -> None:
        with session_scope(sessions) as session:
            due.append(outbox.claim_due(session, hold_s=60, now=utcnow() + timedelta(seconds=1)))

    with sessions() as stalled:
        stalled.execute(update(WebhookDelivery).where(WebhookDelivery.id == frozen).values(attempts=0))
        thread = threading.Thread(target=dispatch, daemon=True)
        thread.start()
        thread.join(10)
        stalled.rollback()
    thread.join(10)
    assert due[0] == [(other, 0)]


def test_failures_follow_the_schedule_with_jitter_and_retry_after_then_fail(sessions, submit_job) -> None:
    delivery_id = _one_message(sessions, submit_job)
    now = utcnow()
    assert (
        _record(sessions, delivery_id, Outcome(Verdict.RETRY, answer=500, error="HTTP 500"), now=now)
        is DeliveryStatus.PENDING
    )
    with sessions() as session:
        row = session.get(WebhookDelivery, delivery_id)
        delay = (row.next_attempt_at - now).total_seconds()
        assert 4.5 <= delay <= 5.5 and row.attempts == 1 and row.last_status_code == 500
    # the endpoint asks for more time than the schedule gives: honoured
    assert (
        _record(sessions, delivery_id, Outcome(Verdict.RETRY, answer=429, retry_after_s=600), now=now)
        is DeliveryStatus.PENDING
    )
    with sessions() as session:
        assert (session.get(WebhookDelivery, delivery_id).next_attempt_at - now).total_seconds() == 600
    assert (
        _record(sessions, delivery_id, Outcome(Verdict.RETRY, error="ConnectError: refused"), now=now)
        is DeliveryStatus.FAILED
    )
    with sessions() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row.attempts == 3 and row.next_attempt_at is None and row.last_error.startswith("Connect")


@pytest.mark.parametrize("asked_s", [10**14, float("inf"), 251_606_008_954.0])  # ~3 My, inf, year 9999
def test_a_retry_after_of_years_waits_a_day_and_the_schedule_still_ends(
    sessions, submit_job, asked_s
) -> None:
    delivery_id = _one_message(sessions, submit_job)
    now = utcnow()
    outcome = Outcome(Verdict.RETRY, answer=503, error="HTTP 503", retry_after_s=asked_s)
    assert _record(sessions, delivery_id, outcome, now=now) is DeliveryStatus.PENDING
    with sessions() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row.attempts == 1 and (row.next_attempt_at - now).total_seconds() == 86400
    assert _record(sessions, delivery_id, outcome, now=now) is DeliveryStatus.PENDING
    assert _record(sessions, delivery_id, outcome, now=now) is DeliveryStatus.FAILED


def test_outcomes_are_fenced_by_attempt(sessions, submit_job) -> None:
    delivery_id = _one_message(sessions, submit_job)
    assert _record(sessions, delivery_id, Outcome(Verdict.DELIVERED, answer=200)) is DeliveryStatus.DELIVERED
    with session_scope(sessions) as session:  # a duplicate attempt reporting late changes nothing
        assert (
            outbox.record_outcome(session, delivery_id, 0, Outcome(Verdict.RETRY, answer=500), [5.0]) is None
        )
    with sessions() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row.status is DeliveryStatus.DELIVERED and row.delivered_at is not None


def test_a_handed_back_message_is_due_at_once_with_no_attempt_counted(sessions, submit_job) -> None:
    delivery_id = _one_message(sessions, submit_job)
    with session_scope(sessions) as session:  # reserved by the dispatcher, then given up at shutdown
        assert outbox.claim_due(session, hold_s=600) == [(delivery_id, 0)]
    with session_scope(sessions) as session:
        assert not outbox.hand_back(session, delivery_id, 1)  # not its attempt count: fenced
        assert outbox.hand_back(session, delivery_id, 0)
    with session_scope(sessions) as session:
        assert outbox.claim_due(session, hold_s=600) == [(delivery_id, 0)]  # due again, not in ten minutes
    with sessions() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert (row.status, row.attempts, row.last_error) == (DeliveryStatus.PENDING, 0, None)
    assert _record(sessions, delivery_id, Outcome(Verdict.DELIVERED, answer=200)) is DeliveryStatus.DELIVERED
    with session_scope(sessions) as session:  # a settled message is not handed back
        assert not outbox.hand_back(session, delivery_id, 0)


def test_gone_stops_the_jobs_other_messages_to_that_url(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK)
    _run_to_success(sessions, job_id)
    running, succeeded = _messages(sessions, job_id)
    assert _record(sessions, running.id, Outcome(Verdict.GONE, answer=410)) is DeliveryStatus.GONE
    assert [m.status for m in _messages(sessions, job_id)] == [DeliveryStatus.GONE, DeliveryStatus.GONE]


def test_after_gone_later_state_changes_send_that_url_nothing(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK)
    with session_scope(sessions) as session:
        assert transitions.claim(session, job_id, "w1", lease_s=60) is not None
    [running] = _messages(sessions, job_id)
    assert _record(sessions, running.id, Outcome(Verdict.GONE, answer=410)) is DeliveryStatus.GONE
    with session_scope(sessions) as session:
        assert transitions.finish(session, job_id, 1, RESULT)
    assert [m.event for m in _messages(sessions, job_id)] == ["job.running"]


def test_an_unsafe_address_fails_at_once(sessions, submit_job) -> None:
    delivery_id = _one_message(sessions, submit_job)
    assert _record(sessions, delivery_id, Outcome(Verdict.REFUSED, error="private")) is DeliveryStatus.FAILED


def test_redeliver_resends_the_same_terminal_message(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK)
    with session_scope(sessions) as session, pytest.raises(JobNotTerminal):
        outbox.redeliver(session, queries.get_job(session, job_id))
    _run_to_success(sessions, job_id)
    with session_scope(sessions) as session:
        again = outbox.redeliver(session, queries.get_job(session, job_id))
        again_id = again.id
    _, succeeded, resent = _messages(sessions, job_id)
    assert resent.id == again_id and resent.status is DeliveryStatus.PENDING
    assert (resent.message_id, resent.payload) == (succeeded.message_id, succeeded.payload)
    plain = submit_job()
    _run_to_success(sessions, plain)
    with session_scope(sessions) as session, pytest.raises(NoWebhook):
        outbox.redeliver(session, queries.get_job(session, plain))


def test_redeliver_sends_no_event_the_job_left_out(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK, webhook_events=["job.running"])
    _run_to_success(sessions, job_id)
    with session_scope(sessions) as session, pytest.raises(NoWebhook):
        outbox.redeliver(session, queries.get_job(session, job_id))
    assert [m.event for m in _messages(sessions, job_id)] == ["job.running"]


def test_redeliver_sends_nothing_to_a_url_that_answered_gone(sessions, submit_job) -> None:
    job_id = submit_job(webhook_url=HOOK)
    _run_to_success(sessions, job_id)
    running, _ = _messages(sessions, job_id)
    assert _record(sessions, running.id, Outcome(Verdict.GONE, answer=410)) is DeliveryStatus.GONE
    with session_scope(sessions) as session, pytest.raises(NoWebhook, match="410"):
        outbox.redeliver(session, queries.get_job(session, job_id))
    assert [m.status for m in _messages(sessions, job_id)] == [DeliveryStatus.GONE, DeliveryStatus.GONE]


# -- sending --------------------------------------------------------------------------------------


def _delivery(url: str, payload: dict | None = None) -> WebhookDelivery:
    return WebhookDelivery(
        id="d1",
        message_id="msg_test1",
        job_id="j1",
        event="job.succeeded",
        url=url,
        payload=payload
        or {
            "type": "job.succeeded",
            "timestamp": "2026-11-27T10:00:00Z",
            "data": {"id": "j1", "status": "succeeded", "note": "é"},
        },
        status=DeliveryStatus.PENDING,
        attempts=0,
    )


OLD_SECRET = "whsec_" + "b2xkLXNlY3JldC1zdGlsbC1hY2NlcHRlZC0zMmJ5dGVz"


def test_messages_carry_standard_webhooks_signatures_for_every_secret(
    webhook_receiver: LocalHTTPServer,
) -> None:
    delivery = _delivery(webhook_receiver.url)
    outcome = send(guarded_pool(allow_private=True), delivery, [WEBHOOK_SECRET, OLD_SECRET], 5.0)
    assert (outcome.verdict, outcome.answer) == (Verdict.DELIVERED, 204)
    [(path, headers, body)] = webhook_receiver.wait_for(1)
    assert path == "/hook" and headers["webhook-id"] == "msg_test1"
    assert headers["content-type"] == "application/json"
    for secret in (WEBHOOK_SECRET, OLD_SECRET):  # receivers on either side of a rotation accept it
        assert Webhook(secret).verify(body, headers) == delivery.payload
    tampered = body.replace(b"succeeded", b"failed")
    with pytest.raises(Exception, match="signature"):
        Webhook(WEBHOOK_SECRET).verify(tampered, headers)
    assert len(headers["webhook-signature"].split(" ")) == 2


def test_redirects_are_not_followed_and_retry_after_is_read(webhook_receiver: LocalHTTPServer) -> None:
    pool = guarded_pool(allow_private=True)
    webhook_receiver.answers = [
        (302, {"Location": "http://169.254.169.254/"}, b""),
        (503, {"Retry-After": "120"}, b""),
    ]
    redirected = send(pool, _delivery(webhook_receiver.url), [WEBHOOK_SECRET], 5.0)
    assert (redirected.answer, redirected.verdict) == (302, Verdict.RETRY)
    busy = send(pool, _delivery(webhook_receiver.url), [WEBHOOK_SECRET], 5.0)
    assert (busy.answer, busy.retry_after_s, busy.verdict) == (503, 120.0, Verdict.RETRY)
    assert len(webhook_receiver.requests) == 2  # nothing went to the redirect target


def test_the_guard_refuses_non_public_addresses_before_connecting(webhook_receiver: LocalHTTPServer) -> None:
    port = int(webhook_receiver.url.split(":")[2].split("/")[0])
    pool = guarded_pool(allow_private=False, allowed_ports=[port])  # the port passes: the address decides
    for url in (webhook_receiver.url, f"http://localhost:{port}/hook"):
        outcome = send(pool, _delivery(url), [WEBHOOK_SECRET], 5.0)
        assert outcome.verdict is Verdict.REFUSED and "not allowed" in (outcome.error or "")
        assert "127.0.0.1" not in (outcome.error or "")  # what a name resolves to stays in the log
    assert webhook_receiver.requests == []


def test_the_guard_refuses_ports_off_the_allow_list(webhook_receiver: LocalHTTPServer) -> None:
    for pool in (guarded_pool(allow_private=False), guarded_pool(allow_private=True, allowed_ports=[443])):
        outcome = send(pool, _delivery(webhook_receiver.url), [WEBHOOK_SECRET], 5.0)
        assert outcome.verdict is Verdict.REFUSED and "not allowed" in (outcome.error or "")
    assert webhook_receiver.requests == []


def test_a_url_no_request_line_can_carry_is_refused_not_raised(webhook_receiver: LocalHTTPServer) -> None:
    # A row stored before submit checked for it: an `Outcome`, never an exception the task dies of
    # (which left the message pending, handed over again and again).
    outcome = send(
        guarded_pool(allow_private=True), _delivery(webhook_receiver.url + "\u00e9"), [WEBHOOK_SECRET], 5.0
    )
    assert outcome.verdict is Verdict.REFUSED and "ASCII" in (outcome.error or "")
    assert webhook_receiver.requests == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_an_unreachable_endpoint_is_retried_not_refused() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = _delivery(f"http://127.0.0.1:{port}/")
    outcome = send(guarded_pool(allow_private=True), closed, [WEBHOOK_SECRET], 5.0)
    assert outcome.answer is None and outcome.verdict is Verdict.RETRY and outcome.error
    assert (
        outcome.error.startswith("ConnectError") and "127.0.0.1" not in outcome.error
    )  # last_error is public


@pytest.fixture
def trickling_endpoint() -> Iterator[str]:
    """An endpoint that answers a header line every 0.2 s for 30 s: each read of the answer gets bytes
    well within any per-read timeout, so only a limit on the whole attempt ends it early."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(150):
                    if stop.wait(0.2):
                        return
                    conn.sendall(b"x-still-there: yes\r\n")
                conn.sendall(b"content-length: 0\r\n\r\n")
            except OSError:
                pass  # the client gave up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    listener.close()
    thread.join(timeout=5)


def test_an_attempt_is_bounded_in_all_not_per_read(trickling_endpoint: str) -> None:
    outcome = send(guarded_pool(allow_private=True), _delivery(trickling_endpoint), [WEBHOOK_SECRET], 1.0)
    assert (outcome.verdict, outcome.answer) == (Verdict.RETRY, None)
    assert outcome.error is not None and outcome.error.startswith("ReadTimeout")


# -- the tasks --------------------------------------------------------------------------------------


@pytest.fixture
def webhook_runtime(make_settings: Callable[..., Settings], db_url: str, redis_url: str) -> Iterator[Runtime]:
    settings = make_settings(
        database_url=db_url, broker_url=redis_url, allow_private_urls=True, webhook_retry_s=[0.0, 0.0]
    )
    rt = Runtime(settings=settings, worker_id="light@host", hostname=socket.gethostname(), pid=os.getpid())
    install_runtime(rt)
    yield rt
    reset_runtime()


def attempts(verdict: str) -> float:
    return metrics.REGISTRY.get_sample_value("varedit_webhook_attempts_total", {"verdict": verdict}) or 0.0


def test_deliver_task_sends_each_message_once_and_retries_failures(
    webhook_runtime: Runtime, webhook_receiver: LocalHTTPServer
) -> None:
    sessions = webhook_runtime.sessions
    job_id = transitions.new_job_id()
    with session_scope(sessions) as session:
        transitions.submit(
            session,
            job_id=job_id,
            owner="anonymous",
            spec=transitions.EditSpec("x", "tiny", 32, 1, 3.0, 0.1, 3600, webhook_url=webhook_receiver.url),
            source_key="k",
            source_content_type="image/png",
        )
    _run_to_success(sessions, job_id)
    webhook_receiver.answers = [(500, {}, b"")]  # the first attempt fails
    with session_scope(sessions) as session:
        due = outbox.claim_due(session, 60)
    assert len(due) == 2
    before = {v: attempts(v) for v in ("retry", "delivered")}
    statuses = [webhook_tasks.deliver_webhook(*d) for d in due]
    assert statuses == ["pending", "delivered"]
    assert webhook_tasks.deliver_webhook(*due[1]) is None  # a duplicate task for a settled message
    # a redelivered copy of the failed attempt's task sends nothing: the retry has its own schedule
    assert webhook_tasks.deliver_webhook(*due[0]) is None
    with session_scope(sessions) as session:  # retry schedule 0 s: due again at once
        assert outbox.claim_due(session, 60) == [(due[0].delivery_id, 1)]
    assert webhook_tasks.deliver_webhook(*due[0]._replace(attempts=1)) == "delivered"
    assert {v: attempts(v) - before[v] for v in before} == {
        "retry": 1,
        "delivered": 2,
    }  # the worker's counter
    events = [json.loads(body)["type"] for _, _, body in webhook_receiver.wait_for(3)]
    assert events == ["job.running", "job.succeeded", "job.running"]
    ids = [headers["webhook-id"] for _, headers, _ in webhook_receiver.requests]
    assert ids[0] == ids[2] != ids[1]  # a retry keeps its webhook-id


# -- the routes -------------------------------------------------------------------------------------


def test_delivery_log_and_redeliver_routes(harness: ApiHarness) -> None:
    job = post_json(harness, image_bytes(), webhook_url=HOOK).json()
    assert harness.client.get(f"/v1/jobs/{job['id']}/webhooks").json() == {"data": []}
    response = harness.client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "job_not_terminal")
    _run_to_success(harness.sessions, job["id"])
    log = harness.client.get(f"/v1/jobs/{job['id']}/webhooks").json()["data"]
    assert [(d["event"], d["status"], d["attempts"]) for d in log] == [
        ("job.running", "pending", 0),
        ("job.succeeded", "pending", 0),
    ]
    assert "payload" not in log[0]
    response = harness.client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver")
    assert response.status_code == 202
    assert response.json()["message_id"] == log[1]["message_id"]
    assert len(harness.client.get(f"/v1/jobs/{job['id']}/webhooks").json()["data"]) == 3
    plain = post_json(harness, image_bytes()).json()
    _run_to_success(harness.sessions, plain["id"])
    response = harness.client.post(f"/v1/jobs/{plain['id']}/webhooks/redeliver")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "no_webhook")
    assert harness.client.get("/v1/jobs/nope/webhooks").status_code == 404


def test_messages_are_counted_in_metrics(harness: ApiHarness) -> None:
    job = post_json(harness, image_bytes(), webhook_url=HOOK).json()
    _run_to_success(harness.sessions, job["id"])
    text = generate_latest(registry_for(harness.sessions, harness.settings)).decode()  # beat's gauges
    assert 'varedit_webhook_deliveries_pending{event="job.succeeded"} 1.0' in text
    with harness.sessions() as session:
        assert len(list(session.scalars(select(WebhookDelivery)))) == 2


def test_answers_are_judged_as_standard_webhooks_reads_them() -> None:
    from worker.webhook_sender import judge

    now = datetime.now(UTC)
    assert judge(204, None, now) == Outcome(Verdict.DELIVERED, answer=204)
    assert judge(410, None, now).verdict is Verdict.GONE
    assert judge(500, "30", now) == Outcome(Verdict.RETRY, answer=500, error="HTTP 500", retry_after_s=30.0)
