"""API keys: minting, checking, revoking the bearer tokens clients send, and their webhook secrets.

A token is ``vsk_<id>_<secret>``: the id finds the row and is the owner of the key's jobs; the SHA-256
of the whole token must equal the stored digest (compared in constant time). Tokens carry 256 random
bits, so a fast hash suffices: slow password hashes only help against guessing low-entropy secrets.
The token itself is never stored and is shown once, when the key is made.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from jobs.errors import ApiKeyNotFound
from jobs.models import ApiKey, utcnow
from jobs.rates import check_rate_limit

TOKEN_PREFIX = "vsk_"
MAX_IN_FLIGHT = 2**31 - 1  # the 32-bit max_in_flight column


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    token: str  # shown once


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _column_length(column: str) -> int:
    """The most characters the api_keys column holds (PostgreSQL refuses more; SQLite would keep them)."""
    length = ApiKey.__table__.c[column].type.length
    assert isinstance(length, int)
    return length


def check_new_key(name: str, *, rate_limit: str | None = None, max_in_flight: int | None = None) -> None:
    """ValueError, naming the value, for a key that could not be stored or that no request could pass:
    an empty name or one longer than its column, a rate `check_rate_limit` refuses or longer than its
    column, a cap of no job or one the column cannot hold. Checked before anything is stored."""
    if not name.strip():
        raise ValueError("a key's name must not be empty")
    if len(name) > (longest := _column_length("name")):
        raise ValueError(f"a key's name has at most {longest} characters, got {len(name)}")
    if rate_limit is not None:
        if len(rate_limit) > (longest := _column_length("rate_limit")):
            raise ValueError(f"a rate limit has at most {longest} characters, got {len(rate_limit)}")
        check_rate_limit(rate_limit)
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max in flight {max_in_flight} allows no job (at least 1)")
    if max_in_flight is not None and max_in_flight > MAX_IN_FLIGHT:
        raise ValueError(f"max in flight {max_in_flight} is more than {MAX_IN_FLIGHT}")


def create(
    session: Session,
    name: str,
    *,
    rate_limit: str | None = None,
    max_in_flight: int | None = None,
    max_priority: int = 0,
    now: datetime | None = None,
) -> NewKey:
    """A new key; ``rate_limit`` in the `limits` notation ("60/minute", "1000/day"), checked here.
    ``max_priority``: the highest job priority it may ask for (0, normal, unless granted more)."""
    # ValueError for nonsense, before anything is stored: a key no request could ever pass (a cap of no
    # job, a rate of none per period) would be told 429 and to retry, forever.
    check_new_key(name, rate_limit=rate_limit, max_in_flight=max_in_flight)
    key_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=key_id,
        name=name,
        token_sha256=_digest(token),
        webhook_secret=new_webhook_secret(),
        rate_limit=rate_limit,
        max_in_flight=max_in_flight,
        max_priority=max_priority,
        created_at=now or utcnow(),
    )
    session.add(key)
    session.flush()
    return NewKey(key, token)


async def authenticate_async(session: AsyncSession, token: str) -> ApiKey | None:
    """The live key this token belongs to, or None (malformed, unknown, wrong secret or revoked). On an
    asyncio session: no thread is taken while the database answers."""
    key_id = token_key_id(token)
    return checked(await session.get(ApiKey, key_id) if key_id else None, token)


def token_key_id(token: str) -> str | None:
    """The key id a well-formed token names (`vsk_<id>_<secret>`), else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    key_id, _, rest = token.removeprefix(TOKEN_PREFIX).partition("_")
    return key_id if key_id and rest else None


def checked(key: ApiKey | None, token: str) -> ApiKey | None:
    """The key when it is live and the token's digest matches (constant-time), else None."""
    if key is None or key.revoked_at is not None:
        return None
    return key if hmac.compare_digest(key.token_sha256, _digest(token)) else None


def get(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise ApiKeyNotFound(f"no API key {key_id}", details={"id": key_id})
    return key


def revoke(session: Session, key_id: str, *, now: datetime | None = None) -> ApiKey:
    """Idempotent: the key stops working at once; its jobs stay (and keep running)."""
    key = get(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = now or utcnow()
    return key


def rotate_webhook_secret(session: Session, key_id: str) -> ApiKey:
    """A new signing secret; the current one keeps signing beside it until the next rotation."""
    key = get(session, key_id)
    key.previous_webhook_secret, key.webhook_secret = key.webhook_secret, new_webhook_secret()
    return key


def all_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def webhook_secrets_of(session: Session, owner: str) -> list[str] | None:
    """The signing secrets of the key that owns a job; None when the owner is not a key (no auth)."""
    key = session.get(ApiKey, owner)
    return key.webhook_secrets if key is not None else None
