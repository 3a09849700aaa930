"""The connection rules of ``app.webhooks.rules``, transcribed as a model for expectations.

Tests derive what the database must hold from this model and the events they send, so no test
hard-codes the outcome of one particular order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tests.webhooks.helpers import auth_body


@dataclass(frozen=True, slots=True)
class Event:
    operation: str
    success: bool
    error_type: str | None = None
    attributed: bool = False

    def body(self, connection_id: str) -> bytes:
        return auth_body(
            operation=self.operation,
            success=self.success,
            connection_id=connection_id,
            tags={"end_user_id": "user-1", "organization_id": "org-1"} if self.attributed else None,
            error=None
            if self.success
            else {"type": self.error_type or "unknown", "description": "it broke"},
        )


CREATION = Event("creation", True, attributed=True)
CREATION_FAILED = Event("creation", False, "invalid_credentials")
REFRESH_FAILED = Event("refresh", False, "refresh_token_external_error")
REFRESH_OK = Event("refresh", True)
OVERRIDE_OK = Event("override", True)
OVERRIDE_FAILED = Event("override", False, "override_error")
DELETION = Event("deletion", True)


@dataclass(frozen=True, slots=True)
class State:
    status: str | None  # None: no connection
    error_type: str | None
    end_user_id: str | None
    history: int


def final_state(events: Iterable[Event]) -> State:
    """The rules of ``app.webhooks.rules``, applied to distinct events in arrival order."""
    status: str | None = None
    error_type: str | None = None
    attributed = False
    history = 0
    for item in events:
        changes = item.operation in {"override", "refresh"} or item.success
        if not changes:
            continue  # a failed creation (or deletion) touches no connection
        history += 1  # every event for a connection is kept in its history, ignored or not
        attributed = attributed or item.attributed  # attribution is merged, never erased
        if status == "deleted":
            continue  # a deleted connection is final for webhooks
        if item.operation == "creation":
            # A late creation for a known connection leaves its status alone.
            status = status or "active"
        elif item.operation == "deletion":
            status = "deleted"
        elif item.success:
            status, error_type = "active", None
        else:
            status, error_type = "auth_error", item.error_type
    return State(status, error_type, "user-1" if attributed else None, history)
