"""The VAREdit Serve HTTP client: installs and imports without torch or the platform.

`Client` / `AsyncClient` submit edits and return `Job` / `AsyncJob` handles (wait with progress, result,
cancel, events); `client.jobs` gets and lists jobs; errors are typed (`ApiError` and its subclasses);
`verify_webhook` checks a webhook delivery. The commands (``varedit-client``) are in `varedit_client.cli`.
"""

from varedit_client.aio import AsyncClient, AsyncJob, AsyncJobs
from varedit_client.client import Client, Job, Jobs
from varedit_client.config import DEFAULT_URL
from varedit_client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    InvalidRequest,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    VareditError,
    WebhookVerificationFailed,
)
from varedit_client.retry import RetryPolicy
from varedit_client.types import (
    JobEvent,
    JobPreviewEvent,
    JobProgressEvent,
    JobPublic,
    JobStatus,
    JobStatusEvent,
    WebhookEvent,
)
from varedit_client.webhooks import verify_webhook

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "AsyncJob",
    "AsyncJobs",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Gone",
    "InvalidRequest",
    "Job",
    "JobEvent",
    "JobFailed",
    "JobPreviewEvent",
    "JobProgressEvent",
    "JobPublic",
    "JobStatus",
    "JobStatusEvent",
    "Jobs",
    "NotFound",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "VareditError",
    "WebhookEvent",
    "WebhookVerificationFailed",
    "verify_webhook",
]
