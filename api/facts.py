"""The served models' facts for request validation, read from the database at most once per
``FACTS_TTL_S`` in each API process. They change when a worker loads a model, not per request, and
reading them was a query on every submit."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings
from jobs.workers import ModelFacts, model_facts

FACTS_TTL_S = 5.0

Facts = dict[str, ModelFacts | None]


class FactsCache:
    """While some model is still unknown (no worker reported it, no complete override) nothing is
    kept, so the first worker's report is seen by the next request; known facts are kept for the TTL,
    so a worker with new facts (another release of the model) is seen within it."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        ttl_s: float = FACTS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions, self.settings, self.ttl_s, self.clock = sessions, settings, ttl_s, clock
        self._facts: Facts | None = None
        self._until = 0.0

    def fresh(self) -> Facts | None:
        """The kept facts, or None when they must be read (`load`, a blocking query)."""
        return self._facts if self._facts is not None and self.clock() < self._until else None

    def load(self) -> Facts:
        with self.sessions() as session:
            facts = model_facts(session, self.settings)
        if all(f is not None for f in facts.values()):
            self._facts, self._until = facts, self.clock() + self.ttl_s
        return facts
