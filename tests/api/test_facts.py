"""The API keeps the served models' facts for a few seconds, except while a model is still unknown."""

from __future__ import annotations

from sqlalchemy import event

from api.facts import FactsCache
from jobs import workers
from jobs.db import session_scope
from tests.conftest import TINY_FACTS, ApiHarness


def test_known_facts_are_kept_for_the_ttl_and_an_unknown_model_is_asked_every_time(
    make_settings, sqlite_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url=sqlite_url, broker_url=redis_url, models=["tiny", "other"])
    with ApiHarness(settings) as harness:
        now = [100.0]
        cache = FactsCache(harness.sessions, settings, ttl_s=5.0, clock=lambda: now[0])
        reads: list[str] = []
        engine = harness.sessions.kw["bind"]
        listener = lambda *args: reads.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert cache.fresh() is None and cache.load()["other"] is None
            assert cache.fresh() is None  # "other" is unknown: nothing kept
            other = workers.ModelFacts("other", [64], {"cfg": 2.0, "tau": 0.3})
            with session_scope(harness.sessions) as session:
                workers.record_model(session, other, "w")
            assert cache.load()["other"].resolutions == [64]  # the first report is seen at once
            count = len(reads)
            assert cache.fresh()["tiny"].resolutions == TINY_FACTS.resolutions
            assert len(reads) == count  # kept: no query
            now[0] += 5.0
            assert cache.fresh() is None  # expired: read again
        finally:
            event.remove(engine, "before_cursor_execute", listener)
