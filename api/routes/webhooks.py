"""A job's webhook delivery log, and redelivery of its terminal event."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import OwnedJobDep, SessionsDep, SettingsDep
from api.errors import RedeliveryLimit
from api.limits import WriterDep
from api.schemas import WebhookDeliveryList, WebhookDeliveryPublic, error_responses
from jobs import outbox, queries
from jobs.db import session_scope
from jobs.models import WebhookDelivery

router = APIRouter(prefix="/v1", tags=["webhooks"])
RETRY_NEVER_S = 86400  # the cap does not reset: Retry-After says "not soon"


def _public(delivery: WebhookDelivery) -> dict[str, Any]:
    return WebhookDeliveryPublic.model_validate(delivery).model_dump(mode="json")


@router.get("/jobs/{job_id}/webhooks", response_model=WebhookDeliveryList, responses=error_responses(404))
def list_webhook_deliveries(job: OwnedJobDep, sessions: SessionsDep) -> dict[str, Any]:
    """Every webhook message of the job, oldest first, with the outcome of its latest attempt."""
    with session_scope(sessions) as session:
        return {"data": [_public(d) for d in outbox.deliveries(session, job.id)]}


@router.post(
    "/jobs/{job_id}/webhooks/redeliver",
    status_code=202,
    response_model=WebhookDeliveryPublic,
    responses=error_responses(401, 404, 409, 429),
)
def redeliver_webhook(
    _: WriterDep, job: OwnedJobDep, sessions: SessionsDep, settings: SettingsDep
) -> dict[str, Any]:
    """Send the job's terminal event again (same `webhook-id` when it was sent before). 409 while the
    job is not terminal or when it has no webhook_url; 429 after `VAREDIT_MAX_REDELIVERIES` of them."""
    with session_scope(sessions) as session:
        job = queries.get_job(session, job.id)
        if outbox.redeliveries(session, job) >= settings.max_redeliveries:
            raise RedeliveryLimit(
                f"job {job.id} was redelivered {settings.max_redeliveries} times already",
                RETRY_NEVER_S,
                details={"max_redeliveries": settings.max_redeliveries},
            )
        return _public(outbox.redeliver(session, job))
