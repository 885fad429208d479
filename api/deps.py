"""Dependencies of the routes, as ``Annotated`` aliases: settings, sessions, storage, publisher, caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.errors import Unauthorized
from api.facts import FactsCache
from api.watch import JobWatcher
from jobs import keys, queries
from jobs.models import Job
from jobs.notify import Notifier
from jobs.queue import Publisher
from jobs.settings import Settings
from jobs.storage import Storage


@dataclass(frozen=True)
class Principal:
    """Who is calling; owns the jobs it submits. Limits left None fall back to the deployment's."""

    id: str
    rate_limit: str | None = None
    max_in_flight: int | None = None
    signs_webhooks: bool = False  # has its own webhook secret (an API key)
    max_priority: int = 0  # the highest job priority it may ask for


# With auth off there is one caller (a laptop): no other tenant to be fair to.
ANONYMOUS = Principal("anonymous", max_priority=10)


# The getters below only read app.state: `async def` keeps FastAPI from running each in a worker
# thread (a thread hop per dependency per request was a tenth of a submit's CPU).
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def get_session(sessions: Annotated[sessionmaker[Session], Depends(get_sessions)]) -> Iterator[Session]:
    """A read session; writes go through `jobs.service`, which owns its transactions."""
    with sessions() as session:
        yield session


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher


async def get_notifier(request: Request) -> Notifier:
    return request.app.state.notifier


async def get_facts(request: Request) -> FactsCache:
    return request.app.state.facts


async def get_watcher(request: Request) -> JobWatcher:
    return request.app.state.watcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StorageDep = Annotated[Storage, Depends(get_storage)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
NotifierDep = Annotated[Notifier, Depends(get_notifier)]
WatcherDep = Annotated[JobWatcher, Depends(get_watcher)]
FactsDep = Annotated[FactsCache, Depends(get_facts)]


BEARER = HTTPBearer(auto_error=False, description="An API key from `varedit-serve keys create`.")


async def current_principal(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Principal:
    """The caller: the API key in `Authorization: Bearer`, or ``anonymous`` when auth is off. Async all
    the way (an asyncio database session): authenticating never waits for a worker thread, so slow
    requests holding threads cannot starve it."""
    if settings.auth == "none":
        return ANONYMOUS
    if credentials is None:
        raise Unauthorized("send the API key as `Authorization: Bearer <key>`")
    async with request.app.state.async_sessions() as session:
        key = await keys.authenticate_async(session, credentials.credentials)
    if key is None:
        raise Unauthorized("the API key is not valid or was revoked")
    structlog.contextvars.bind_contextvars(api_key=key.id)
    return Principal(
        key.id, key.rate_limit, key.max_in_flight, signs_webhooks=True, max_priority=key.max_priority
    )


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def read_owned_job(sessions: sessionmaker[Session], job_id: str, owner: str) -> Job:
    """The owner's job, read in a short session (long waits and streams must not hold a connection);
    another owner's job is a 404 like a missing one."""
    with sessions() as session:
        return queries.get_job(session, job_id, owner)


def owned_job(job_id: str, principal: PrincipalDep, sessions: SessionsDep) -> Job:
    return read_owned_job(sessions, job_id, principal.id)


OwnedJobDep = Annotated[Job, Depends(owned_job)]
