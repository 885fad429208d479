"""How the commands show a job's progress: a per-scale bar (tqdm) for a person at a terminal, plain lines
for logs and pipes, where carriage-return redraws would be noise."""

from __future__ import annotations

import os
from typing import Protocol, TextIO

from tqdm import tqdm

from varedit_client.types import JobProgressEvent, JobPublic


class ProgressView(Protocol):
    def started(self, job: JobPublic) -> None: ...
    def progress(self, event: JobProgressEvent) -> None: ...
    def ended(self, job: JobPublic) -> None: ...


def view_for(stream: TextIO) -> ProgressView:
    """A bar at a terminal that says how wide it is; plain lines elsewhere, and at a terminal of no width
    (a pseudo-terminal never sized, as `script` run without a terminal gives), where a bar draws nothing."""
    return BarView(stream) if stream.isatty() and _columns(stream) > 0 else LineView(stream)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # no file descriptor, or not a terminal after all
        return 0


def describe(job: JobPublic) -> str:
    """``ID: status`` with the error's code and message when there is one."""
    error = f" {job.error.code}: {job.error.message}" if job.error is not None else ""
    return f"{job.id}: {job.status.value}{error}"


class LineView:
    """One line per change: ``ID: queued``, ``ID: scale 1/4``, ..., ``ID: succeeded``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def started(self, job: JobPublic) -> None:
        self._say(describe(job))

    def progress(self, event: JobProgressEvent) -> None:
        self._say(f"{event.id}: scale {event.scale}/{event.scales}")

    def ended(self, job: JobPublic) -> None:
        self._say(describe(job))


class BarView:
    """A bar redrawn in place, one step per scale; the outcome is printed as a line below it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: tqdm | None = None

    def started(self, job: JobPublic) -> None:
        print(describe(job), file=self.stream, flush=True)

    def progress(self, event: JobProgressEvent) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=event.scales,
                desc=event.id[:8],
                file=self.stream,
                mininterval=0,
                bar_format="{desc} {bar} scale {n}/{total} [{elapsed}]",
                dynamic_ncols=True,
            )
        self.bar.update(event.scale - self.bar.n)

    def ended(self, job: JobPublic) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(describe(job), file=self.stream, flush=True)
