"""Sending one webhook message: Standard Webhooks 1.0 headers and signature, one guarded POST.

The body is the stored payload as compact JSON; ``webhook-timestamp`` is the time of this attempt and
the signature covers ``id.timestamp.body`` (HMAC-SHA256, the `standardwebhooks` library). With
several secrets (rotation) the header carries one signature per secret, space separated, and
receivers accept any that verifies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpcore
import structlog
from standardwebhooks.webhooks import Webhook

from jobs.models import WebhookDelivery
from jobs.netguard import (
    Unresolvable,
    UnsafeURL,
    check_url_text,
    deadline,
    describe_failure,
    header_map,
    timeouts,
)
from jobs.outbox import Outcome, Verdict

USER_AGENT = "varedit-serve-webhooks/1"
GONE = 410  # the endpoint's way to say "stop sending"
MAX_ERROR_CHARS = 500

log = structlog.get_logger(__name__)


def body_of(delivery: WebhookDelivery) -> bytes:
    return json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(secrets: Sequence[str], message_id: str, sent_at: datetime, body: bytes) -> dict[str, str]:
    signatures = " ".join(Webhook(secret).sign(message_id, sent_at, body.decode()) for secret in secrets)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signatures,
    }


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def send(
    pool: httpcore.ConnectionPool, delivery: WebhookDelivery, secrets: Sequence[str], timeout_s: float
) -> Outcome:
    """POST the message once, within ``timeout_s`` in all (connecting, sending, the answer's head);
    every failure becomes an `Outcome`, never an exception."""
    now = datetime.now(UTC)
    body = body_of(delivery)
    headers = signed_headers(secrets, delivery.message_id, now, body)
    try:
        check_url_text(delivery.url)  # httpcore raises TypeError on a non-ASCII URL
        # The answer's body is never read: a receiver could send gigabytes.
        with (
            deadline(timeout_s),
            pool.stream(
                "POST",
                delivery.url,
                headers=headers,
                content=body,
                extensions={"timeout": timeouts(timeout_s)},
            ) as response,
        ):
            status, answer_headers = response.status, response.headers
    except UnsafeURL as e:
        return Outcome(Verdict.REFUSED, error=str(e))
    except Unresolvable as e:
        return Outcome(Verdict.RETRY, error=f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS])
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
        # last_error is shown to the client: the details (socket errors may name the peer) are logged.
        log.info("webhook_attempt_failed", error=repr(e), cause=repr(e.__cause__))
        return Outcome(Verdict.RETRY, error=describe_failure(e)[:MAX_ERROR_CHARS])
    except httpcore.UnsupportedProtocol as e:
        return Outcome(Verdict.REFUSED, error=str(e)[:MAX_ERROR_CHARS])
    return judge(status, header_map(answer_headers).get("retry-after"), now)


def judge(status: int, retry_after: str | None, now: datetime) -> Outcome:
    """The Standard Webhooks reading of an answer: 2xx delivered, 410 gone (stop sending), anything
    else another try (after Retry-After when the endpoint asks for longer)."""
    if 200 <= status < 300:
        return Outcome(Verdict.DELIVERED, answer=status)
    verdict = Verdict.GONE if status == GONE else Verdict.RETRY
    return Outcome(
        verdict, answer=status, error=f"HTTP {status}", retry_after_s=retry_after_s(retry_after, now)
    )
