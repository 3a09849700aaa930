"""Bearer API keys: ``REGISTRY_API_KEYS`` (full access) and keys managed in the database.

Only SHA-256 hashes of keys are stored or compared. A key is looked up by its hash, so the
time taken does not depend on how much of a guessed key is right.

Keys kept in the database are checked without a query per request: each process keeps the
live keys in memory (``ApiKeyCache``) and reloads them at most every ``REFRESH_SECONDS``, so a
revocation takes effect on every instance within that time. A key not in memory makes the
process reload at once (at most once a second), so a key created a moment ago works on its
first request, and a stream of wrong keys costs one small query a second, not one each.

A stored key's ``last_used_at`` is written at most once a minute per key and process, by a
task of its own after the request has been answered, so that an operator can tell which keys
are unused (``api-keys list``) without a write on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from starlette.requests import Request

from app.db.database import Database, sql
from app.db.types import unstorable, utcnow
from app.errors import Forbidden, Unauthorized
from app.logs import get_logger
from app.metrics import AUTH_FAILURES
from app.middleware import log_fields
from app.settings import Settings
from app.state import app_state

# A revoked key stops working on every instance within this many seconds (README).
REFRESH_SECONDS = 4.0
# How often a miss may trigger a reload.
MISS_RELOAD_SECONDS = 1.0
# A key's last use is recorded at most this often (per process): minutes matter to an operator
# deciding what to revoke, a write per request would not.
LAST_USED_SECONDS = 60.0

log = get_logger(__name__)

LIVE_KEYS = sql("SELECT key_hash, name, read_only FROM api_keys WHERE revoked_at IS NULL")
CREATE_KEY = sql(
    "INSERT INTO api_keys (name, key_hash, read_only, created_at)"
    " VALUES (:name, :key_hash, :read_only, :now) ON CONFLICT DO NOTHING RETURNING id"
)
ALL_KEYS = sql(
    "SELECT name, read_only, created_at, last_used_at, revoked_at FROM api_keys ORDER BY name"
)
FIND_KEY = sql("SELECT revoked_at FROM api_keys WHERE name = :name", lock=True)
REVOKE_KEY = sql("UPDATE api_keys SET revoked_at = :now WHERE name = :name")
RECORD_USE = sql(
    "UPDATE api_keys SET last_used_at = :now WHERE key_hash = :key_hash"
    " AND (last_used_at IS NULL OR last_used_at < :now)"
)


# Names appear in every access-log line, so they are kept to plain tokens; "env:" names the
# keys from REGISTRY_API_KEYS.
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
KEY_NAME_RULE = "letters, digits and ._- only, starting with a letter or digit"


def valid_key_name(name: str) -> bool:
    return _KEY_NAME.match(name) is not None


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    read_only: bool


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def configured_key_hashes(settings: Settings) -> dict[str, Principal]:
    """``REGISTRY_API_KEYS`` by hash; they are named ``env:1``, ``env:2``... in logs."""
    return {
        hash_key(key.get_secret_value()): Principal(name=f"env:{index}", read_only=False)
        for index, key in enumerate(settings.registry_api_keys, start=1)
    }


def generate_key() -> str:
    return "nreg_" + secrets.token_urlsafe(32)


class ApiKeyCache:
    """The keys this process accepts: the configured ones, and the live ones in the database."""

    def __init__(self, database: Database, configured: dict[str, Principal]) -> None:
        self._database = database
        self._configured = configured
        self._stored: dict[str, Principal] = {}
        self._loaded_at = -1e9
        self._reloading: asyncio.Task[None] | None = None
        # Uses noted (monotonic time, by hash) and those not yet written, with their time.
        self._used: dict[str, float] = {}
        self._unwritten: dict[str, datetime] = {}
        self._writing: asyncio.Task[None] | None = None

    async def find(self, digest: str) -> Principal | None:
        configured = self._configured.get(digest)
        if configured is not None:
            return configured
        if time.monotonic() - self._loaded_at > REFRESH_SECONDS:
            await self._reload()
        found = self._stored.get(digest)
        if found is None and time.monotonic() - self._loaded_at > MISS_RELOAD_SECONDS:
            await self._reload()
            found = self._stored.get(digest)
        if found is not None:
            self._note_use(digest)
        return found

    def _note_use(self, digest: str) -> None:
        now = time.monotonic()
        if now - self._used.get(digest, -1e9) < LAST_USED_SECONDS:
            return
        self._used[digest] = now
        self._unwritten[digest] = utcnow()
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write_uses())

    async def _write_uses(self) -> None:
        """Write the uses noted so far, in one transaction, outside any request."""
        while self._unwritten:
            batch, self._unwritten = self._unwritten, {}
            rows = [{"key_hash": digest, "now": when} for digest, when in batch.items()]
            try:
                async with self._database.transaction() as tx:
                    await tx.executemany(RECORD_USE, rows)
                log.debug("api_key_use_recorded", keys=len(rows))
            except Exception as error:
                # Not retried: the next use after LAST_USED_SECONDS records it again.
                for digest in batch:
                    self._used.pop(digest, None)
                log.warning("api_key_use_not_recorded", error=type(error).__name__)
                return

    async def close(self) -> None:
        """Write what is noted (at shutdown, while the database is still open)."""
        if self._writing is not None and not self._writing.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._writing), timeout=5)

    async def _reload(self) -> None:
        # One query at a time, however many requests find the keys stale at once.
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self._load())
        await asyncio.shield(self._reloading)

    async def _load(self) -> None:
        async with self._database.reader() as tx:
            rows = await tx.fetchall(LIVE_KEYS)
        self._stored = {key_hash: Principal(name, bool(ro)) for key_hash, name, ro in rows}
        self._loaded_at = time.monotonic()
        log.debug("api_keys_loaded", stored=len(self._stored))


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What ``api-keys list`` shows of a key: never its secret, nor its hash."""

    name: str
    read_only: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def create_api_key(database: Database, *, name: str, read_only: bool) -> str | None:
    """Store a new key's hash; return the key (shown once), or None if the name is taken."""
    key = generate_key()
    async with database.transaction() as tx:
        row = await tx.fetchone(
            CREATE_KEY,
            {"name": name, "key_hash": hash_key(key), "read_only": read_only, "now": utcnow()},
        )
    return None if row is None else key


async def list_api_keys(database: Database) -> list[StoredKey]:
    async with database.reader() as tx:
        return [StoredKey(*row) for row in await tx.fetchall(ALL_KEYS)]


async def revoke_api_key(database: Database, *, name: str) -> str:
    """``revoked``, ``already`` (revoked before) or ``unknown``."""
    if unstorable(name):
        return "unknown"
    async with database.transaction() as tx:
        row = await tx.fetchone(FIND_KEY, {"name": name})
        if row is None:
            return "unknown"
        if row[0] is not None:
            return "already"
        await tx.execute(REVOKE_KEY, {"name": name, "now": utcnow()})
        return "revoked"


def _refused(request: Request, reason: str) -> None:
    # Counted and written on the access line (with the client's address and user agent), so a
    # run of guesses can be traced; never the key itself.
    AUTH_FAILURES.labels(reason=reason).inc()
    log_fields(request.scope)["auth_failure"] = reason


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _refused(request, "missing" if header is None else "malformed")
        raise Unauthorized(
            "send an API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


async def authenticate(request: Request) -> Principal:
    digest = hash_key(_bearer(request))
    match = await app_state(request).api_keys.find(digest)
    if match is None:
        _refused(request, "unknown_key")
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
    log_fields(request.scope)["api_key"] = match.name
    return match


async def require_api_key(request: Request, *, write: bool = False) -> Principal:
    """Authenticate the request; a read-only key asking to change state gets 403."""
    principal = await authenticate(request)
    if write and principal.read_only:
        _refused(request, "read_only")
        raise Forbidden(f"API key {principal.name!r} is read-only")
    return principal
