"""Server-Sent Events, decoded line by line (the text/event-stream rules) and turned into typed job events.

Kept free of IO so the sync and async clients feed it the lines they read the same way. Comment lines
(the server's keep-alive pings) carry nothing and are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from varedit_client.types import JobEvent, JobPreviewEvent, JobProgressEvent, JobPublic, JobStatusEvent


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str


class SseDecoder:
    """Feed it lines without their line ending; it returns an event when a blank line completes one."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None  # `id` and `retry` are not used by this API


def job_event(sse: ServerSentEvent) -> JobEvent | None:
    """The typed event, or None for an event name this client does not know (a newer server's)."""
    if sse.event == "status":
        return JobStatusEvent(job=JobPublic.model_validate_json(sse.data))
    if sse.event == "progress":
        return JobProgressEvent.model_validate(json.loads(sse.data))
    if sse.event == "preview":
        return JobPreviewEvent.model_validate(json.loads(sse.data))
    return None
