"""Per-caller caps on what a request holds open in this API process: `image_url` fetches (connections
and memory) and waits (`Prefer: wait`, event streams: a connection and a database read every few
seconds each). Counted per process, not across replicas: what they protect is the process's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SlotsTaken(RuntimeError):
    """The caller already holds as many slots as allowed."""

    def __init__(self, owner: str, what: str, limit: int) -> None:
        super().__init__(f"{owner} has {limit} {what} open")
        self.limit = limit


class Slot:
    """One slot taken by `CallerSlots.take`. Released once: by `release`, or when it is collected, so a
    response that never ran the code holding it (a client gone before its stream began) frees it too."""

    def __init__(self, slots: CallerSlots, owner: str) -> None:
        self._slots, self._owner = slots, owner

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._give_back(self._owner)

    __del__ = release


class CallerSlots:
    def __init__(self, what: str) -> None:
        self.what = what
        self._held: dict[str, int] = {}
        # Reentrant: a Slot collected while this thread is inside `take` releases under the same lock.
        # One event loop per app, but tests may run several apps at once.
        self._lock = threading.RLock()

    def take(self, owner: str, limit: int) -> Slot:
        """One of ``owner``'s ``limit`` slots; `SlotsTaken` when all are held."""
        with self._lock:
            count = self._held.get(owner, 0)
            if count >= limit:
                raise SlotsTaken(owner, self.what, limit)
            self._held[owner] = count + 1
        return Slot(self, owner)

    @contextmanager
    def hold(self, owner: str, limit: int) -> Iterator[None]:
        """A slot for the block (`take`, then `release` on the way out)."""
        slot = self.take(owner, limit)
        try:
            yield
        finally:
            slot.release()

    def held(self, owner: str) -> int:
        with self._lock:
            return self._held.get(owner, 0)

    def _give_back(self, owner: str) -> None:
        with self._lock:
            left = self._held[owner] - 1
            if left:
                self._held[owner] = left
            else:
                del self._held[owner]


FETCHES = CallerSlots("image_url fetches")
WAITS = CallerSlots("waits")
