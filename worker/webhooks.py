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
from standardwebhooks.webhooks import Webhook

from jobs.models import WebhookDelivery
from jobs.netguard import Unresolvable, UnsafeURL, header_map, timeouts
from jobs.webhooks import Outcome

USER_AGENT = "varedit-serve-webhooks/1"
MAX_ERROR_CHARS = 500


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


def send(pool: httpcore.ConnectionPool, delivery: WebhookDelivery, secrets: Sequence[str],
         timeout_s: float) -> Outcome:
    """POST the message once; every failure becomes an `Outcome`, never an exception."""
    now = datetime.now(UTC)
    body = body_of(delivery)
    headers = signed_headers(secrets, delivery.message_id, now, body)
    try:
        # The answer's body is never read: a receiver could send gigabytes.
        with pool.stream("POST", delivery.url, headers=headers, content=body,
                         extensions={"timeout": timeouts(timeout_s)}) as response:
            status, answer_headers = response.status, response.headers
    except UnsafeURL as e:
        return Outcome(error=str(e), refused=True)
    except (Unresolvable, httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
        return Outcome(error=f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS])
    except httpcore.UnsupportedProtocol as e:
        return Outcome(error=str(e)[:MAX_ERROR_CHARS], refused=True)
    retry_after = header_map(answer_headers).get("retry-after")
    error = None if 200 <= status < 300 else f"HTTP {status}"
    return Outcome(status_code=status, error=error, retry_after_s=retry_after_s(retry_after, now))
