"""Checking a webhook delivery before trusting it: the Standard Webhooks signature over
``webhook-id.webhook-timestamp.body`` with the receiver's secret, and a timestamp within five minutes.

    event = verify_webhook(request_body, request_headers, secret)   # raises WebhookVerificationFailed
    if event.type == "job.succeeded": ...

Pass the raw body bytes as received (re-encoded JSON would not match the signature) and, while a secret
is being rotated, a list of secrets (any one may match). Deduplicate deliveries on ``webhook-id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from varedit_client.errors import WebhookVerificationFailed
from varedit_client.types import WebhookEvent


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str | Sequence[str]) -> WebhookEvent:
    """The delivery's event once its signature checks out with ``secret`` (a ``whsec_`` secret, or several
    during a rotation); `WebhookVerificationFailed` says why it does not."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("no webhook secret given")
    verifiers = [Webhook(s) for s in secrets]  # a malformed secret is the caller's bug: ValueError
    plain = {str(k).lower(): str(v) for k, v in headers.items()}
    reasons = []
    for verifier in verifiers:
        try:
            verifier.verify(body, plain, json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:  # ValueError: a garbled signature header
            reasons.append(str(exc) or type(exc).__name__)
            continue
        try:
            return WebhookEvent.model_validate_json(body)
        except ValidationError as exc:
            raise WebhookVerificationFailed(f"the signed body is not a job event: {exc}") from exc
    reason = "; ".join(dict.fromkeys(reasons))
    raise WebhookVerificationFailed(f"webhook rejected: {reason} (with {len(secrets)} secret(s) tried)")
