"""Bearer API keys: ``REGISTRY_API_KEYS`` (full access) and keys managed in the database.

Only SHA-256 hashes of keys are stored or compared. A key is compared by hash in constant time,
so the comparison time does not depend on how much of a guessed key is right.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlmodel import col, select
from starlette.requests import Request

from app.db.models import ApiKey
from app.errors import Forbidden, Unauthorized
from app.settings import Settings
from app.state import app_state


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    read_only: bool


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def configured_key_hashes(settings: Settings) -> tuple[str, ...]:
    return tuple(hash_key(key.get_secret_value()) for key in settings.registry_api_keys)


def generate_key() -> str:
    return "nreg_" + secrets.token_urlsafe(32)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "send an API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


async def authenticate(request: Request) -> Principal:
    digest = hash_key(_bearer(request))
    state = app_state(request)
    match: Principal | None = None
    # Every configured key is compared, so the time taken does not reveal which one matched.
    for index, configured in enumerate(state.api_key_hashes, start=1):
        if hmac.compare_digest(digest, configured):
            match = Principal(name=f"env:{index}", read_only=False)
    if match is None:
        async with state.reader() as session:
            row = (
                await session.execute(
                    select(col(ApiKey.name), col(ApiKey.read_only)).where(
                        col(ApiKey.key_hash) == digest, col(ApiKey.revoked_at).is_(None)
                    )
                )
            ).first()
        if row is not None:
            match = Principal(name=row.name, read_only=row.read_only)
    if match is None:
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
    request.scope.setdefault("state", {})["api_key"] = match.name
    return match


async def require_api_key(request: Request, *, write: bool = False) -> Principal:
    """Authenticate the request; a read-only key asking to change state gets 403."""
    principal = await authenticate(request)
    if write and principal.read_only:
        raise Forbidden(f"API key {principal.name!r} is read-only")
    return principal
