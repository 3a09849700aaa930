"""Connect sessions this service opened, and the connection each one produced.

``POST /v1/connect-sessions`` gives every session an ID of its own and sends it to Nango as the
tag ``connect_session_id``; Nango copies a session's tags onto the connection it creates and
into the creation webhook, so the connection carries the ID and is found by it through the tag
index. The session is remembered with Nango's expiry, to tell a session still pending from one
that expired, and either from an ID never issued here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from app.connections.model import COLUMNS, Connection
from app.db.database import Transaction, sql
from app.db.types import unstorable, utcnow

SESSION_TAG = "connect_session_id"

REMEMBER = sql(
    "INSERT INTO connect_sessions"
    " (session_id, environment, end_user_id, organization_id, created_at, expires_at)"
    " VALUES (:session_id, :environment, :end_user_id, :organization_id, :created_at,"
    " :expires_at)"
)
FIND = sql("SELECT expires_at, environment FROM connect_sessions WHERE session_id = :session_id")
PRODUCED = sql(
    f"SELECT {', '.join('c.' + name for name in COLUMNS.split(', '))}"  # noqa: S608 (fixed names)
    " FROM connection_tags t JOIN connections c ON c.id = t.connection_pk"
    f" WHERE t.key = '{SESSION_TAG}' AND t.value = :session_id AND c.environment = :environment"
    " ORDER BY c.id LIMIT 1"
)


def new_session_id() -> str:
    """Unguessable: the ID alone tells its holder which connection a session produced."""
    return "cs_" + secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class SessionState:
    status: str  # pending, connected, expired
    connection: Connection | None


async def remember_session(
    tx: Transaction,
    *,
    session_id: str,
    environment: str,
    end_user_id: str | None,
    organization_id: str | None,
    expires_at: datetime,
) -> None:
    await tx.execute(
        REMEMBER,
        {
            "session_id": session_id,
            "environment": environment,
            "end_user_id": end_user_id,
            "organization_id": organization_id,
            "created_at": utcnow(),
            "expires_at": expires_at,
        },
    )


async def session_state(tx: Transaction, session_id: str) -> SessionState | None:
    """What became of a session; None when it was never opened here."""
    if unstorable(session_id):
        return None
    found = await tx.fetchone(FIND, {"session_id": session_id})
    if found is None:
        return None
    expires_at, environment = found
    row = await tx.fetchone(PRODUCED, {"session_id": session_id, "environment": environment})
    if row is not None:
        return SessionState("connected", Connection(*row))
    return SessionState("expired" if utcnow() >= expires_at else "pending", None)
