"""How a webhook changes a connection: the rules, applied to a stored delivery.

Rules (Nango sends no timestamps and no ordering, so they must hold in any order and twice):

- creation ok     → a new connection, ``active``. On a connection already known it is a late or
                    repeated delivery: attribution is merged, the status is left alone.
- creation failed → no connection (the delivery is stored; the body may lack a connection ID).
- override ok / refresh ok → ``active``, error cleared.
- override failed / refresh failed → ``auth_error`` with the error's type and description.
- deletion ok     → ``deleted`` with ``deleted_at``; a tombstone is created for a connection
                    never seen, so a creation that arrives later cannot resurrect it.
- A deleted connection is final for webhooks: later events are recorded in its history only.
- An event for a connection never seen creates it from what the body carries.
- Attribution is merged and never erased (see ``app.connections.store``). A body seen before,
  outside the dedupe window (a repeat, or a captured body replayed), only fills in what the
  connection lacks: it cannot change an owner back (README, "Replays of captured bodies").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from app.connections import feed, store
from app.connections.model import (
    ATTRIBUTION_FIELDS,
    COLUMNS,
    Attribution,
    Connection,
    ConnectionStatus,
    clean_text,
)
from app.db.database import Transaction, sql
from app.db.types import utcnow
from app.webhooks.model import DeliveryOutcome
from app.webhooks.payloads import Envelope

SOURCE = "webhook"

# Sync bodies carry no environment: every live connection with that integration and connection
# ID is updated (legacy IDs repeat only across integrations, not within one).
_RECORD_SYNC = (
    "UPDATE connections SET last_sync_name = :name, last_sync_model = :model,"  # noqa: S608
    " last_sync_success = :success, last_sync_at = :now, last_sync_error = :error,"
    " updated_at = :now"
    " WHERE connection_id = :connection_id AND integration_id = :integration_id"
    " AND status <> 'deleted'{environment}"
    f" RETURNING {COLUMNS}"
)
RECORD_SYNC = sql(_RECORD_SYNC.format(environment=""))
RECORD_SYNC_IN_ENVIRONMENT = sql(_RECORD_SYNC.format(environment=" AND environment = :environment"))


def _error(payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    error = payload.get("error")
    if not isinstance(error, Mapping):
        return None, None
    return clean_text(error.get("type")), clean_text(error.get("description"), limit=4000)


def _target(operation: str, success: bool | None) -> ConnectionStatus | None:
    """The status an auth event asks for, or None when it changes no connection."""
    if operation == "creation":
        return ConnectionStatus.ACTIVE if success else None
    if operation in {"override", "refresh"}:
        return ConnectionStatus.ACTIVE if success else ConnectionStatus.AUTH_ERROR
    if operation == "deletion":
        return ConnectionStatus.DELETED if success else None
    return None


def expected_outcome(envelope: Envelope) -> DeliveryOutcome:
    """What applying a delivery will most likely report, known before touching the database.

    The inbox stores this with the delivery so that the common case needs no second write; a
    sync for a connection never seen is the one case that can turn out differently.
    """
    if not envelope.connection_id or not envelope.integration_id:
        return DeliveryOutcome.RECORDED
    if envelope.webhook_type == "auth":
        target = _target(envelope.operation or "", envelope.success)
        return DeliveryOutcome.RECORDED if target is None else DeliveryOutcome.APPLIED
    if envelope.webhook_type == "sync":
        return DeliveryOutcome.APPLIED
    return DeliveryOutcome.RECORDED


async def apply_delivery(
    tx: Transaction,
    *,
    delivery_id: int,
    payload: Any,
    envelope: Envelope,
    default_environment: str,
    repeated: bool = False,
    connection_stored: bool = False,
) -> DeliveryOutcome:
    """``repeated``: the same body was applied before (see the rules above).
    ``connection_stored``: this transaction found the auth event's connection stored already
    (``NewConnection``), so it need not try to insert it."""
    if not isinstance(payload, Mapping):
        return DeliveryOutcome.RECORDED
    if envelope.webhook_type == "auth":
        return await apply_auth_event(
            tx,
            delivery_id=delivery_id,
            payload=payload,
            envelope=envelope,
            default_environment=default_environment,
            repeated=repeated,
            stored=connection_stored,
        )
    if envelope.webhook_type == "sync":
        return await record_sync_result(
            tx, delivery_id=delivery_id, payload=payload, envelope=envelope
        )
    return DeliveryOutcome.RECORDED


@dataclass(frozen=True)
class AuthEvent:
    """What one auth delivery says about its connection, read once."""

    delivery_id: int | None  # None until the database gives the delivery its ID
    operation: str
    success: bool | None
    target: ConnectionStatus
    environment: str
    integration_id: str
    connection_id: str
    provider: str | None
    auth_mode: str | None
    error_type: str | None
    error_description: str | None
    attribution: Attribution
    now: datetime = field(default_factory=utcnow)

    def new_values(self) -> dict[str, Any]:
        return store.new_connection_values(
            environment=self.environment,
            integration_id=self.integration_id,
            connection_id=self.connection_id,
            provider=self.provider,
            auth_mode=self.auth_mode,
            status=self.target,
            attribution=self.attribution,
            error_type=self.error_type,
            error_description=self.error_description,
            now=self.now,
        )

    def detail(self, ignored: str | None = None) -> dict[str, Any]:
        detail: dict[str, Any] = {"operation": self.operation}
        if self.error_type:
            detail["error_type"] = self.error_type
        if ignored:
            detail["ignored"] = ignored
        return detail


def read_auth_event(
    payload: Mapping[str, Any],
    envelope: Envelope,
    *,
    delivery_id: int | None,
    default_environment: str,
) -> AuthEvent | None:
    """The event, or None when it changes no connection (a failed creation, say)."""
    operation = envelope.operation or ""
    target = _target(operation, envelope.success)
    if target is None or not envelope.connection_id or not envelope.integration_id:
        return None
    error_type, error_description = _error(payload)
    return AuthEvent(
        delivery_id=delivery_id,
        operation=operation,
        success=envelope.success,
        target=target,
        environment=envelope.environment or default_environment,
        integration_id=envelope.integration_id,
        connection_id=envelope.connection_id,
        provider=clean_text(payload.get("provider")),
        auth_mode=clean_text(payload.get("authMode"), limit=64),
        error_type=error_type,
        error_description=error_description,
        attribution=Attribution.from_nango(
            tags=payload.get("tags"), end_user=payload.get("endUser")
        ),
    )


async def apply_auth_event(
    tx: Transaction,
    *,
    delivery_id: int,
    payload: Mapping[str, Any],
    envelope: Envelope,
    default_environment: str,
    repeated: bool = False,
    stored: bool = False,
) -> DeliveryOutcome:
    event = read_auth_event(
        payload, envelope, delivery_id=delivery_id, default_environment=default_environment
    )
    if event is None:
        return DeliveryOutcome.RECORDED
    connection, created = await store.lock_connection(tx, event.new_values(), insert=not stored)
    if created:
        # Inserted with its owner, tags, status and error: nothing left to write but history.
        await store.record_history(tx, [_history(event, connection, None, event.target)])
    else:
        if repeated:
            event = replace(event, attribution=_missing_only(event.attribution, connection))
        await _apply_to_known(tx, event, connection)
    return DeliveryOutcome.APPLIED


@dataclass(frozen=True, slots=True)
class NewConnection:
    """What an auth delivery writes if its connection is not stored yet, as JSON objects: the
    new row, its history row and its one feed event, but for the IDs the database gives the
    connection and the delivery (``app.webhooks.inbox`` writes them in one statement)."""

    connection: dict[str, Any]
    history: dict[str, Any]
    event: dict[str, Any]


def as_new_connection(
    payload: Any, envelope: Envelope, *, default_environment: str
) -> NewConnection | None:
    """The writes ``apply_auth_event`` makes when the connection is new, or None when the
    delivery changes no connection, is not an auth event, or would publish two events (a
    connection first seen broken: rare, left to the rules)."""
    if envelope.webhook_type != "auth" or not isinstance(payload, Mapping):
        return None
    event = read_auth_event(
        payload, envelope, delivery_id=None, default_environment=default_environment
    )
    if event is None:
        return None
    values = event.new_values()
    history = _history(event, store.unsaved(values), None, event.target)
    events = feed.events_for([history])
    if len(events) != 1:
        return None
    return NewConnection(
        connection=values,
        history={name: history[name] for name in store.HISTORY_COLUMNS},
        event=events[0],
    )


def _missing_only(attribution: Attribution, connection: Connection) -> Attribution:
    """What ``attribution`` says that ``connection`` does not know yet, and nothing else."""
    owner = {
        name: getattr(attribution, name)
        for name in ATTRIBUTION_FIELDS
        if getattr(connection, name) is None
    }
    tags = {key: value for key, value in attribution.tags.items() if key not in connection.tags}
    return Attribution(**owner, tags=tags)


def _history(
    event: AuthEvent,
    connection: Connection,
    from_status: str | None,
    to_status: str,
    ignored: str | None = None,
    *,
    owner_changed: bool = False,
) -> dict[str, Any]:
    return store.history_row(
        connection,
        source=SOURCE,
        action=event.operation,
        success=event.success,
        from_status=from_status,
        to_status=to_status,
        delivery_id=event.delivery_id,
        detail=event.detail(ignored),
        now=event.now,
        owner_changed=owner_changed,
    )


async def _apply_to_known(tx: Transaction, event: AuthEvent, connection: Connection) -> None:
    owner_changed, tags_changed = store.merge_owner(connection, event.attribution)
    changed = owner_changed
    for name in ("provider", "auth_mode"):
        value = getattr(event, name)
        if value and value != getattr(connection, name):
            setattr(connection, name, value)
            changed = True
    if tags_changed:
        await store.reindex_tags(tx, connection)
    ignored = None
    if connection.status == ConnectionStatus.DELETED:
        ignored = "the connection is deleted"
    elif event.operation == "creation":
        # A creation for a known connection is late or repeated; what came after it stands.
        ignored = "the connection already exists"
    if ignored is None:
        await store.change_status(
            tx,
            connection,
            event.target,
            source=SOURCE,
            action=event.operation,
            success=event.success,
            error_type=event.error_type,
            error_description=event.error_description,
            delivery_id=event.delivery_id,
            detail=event.detail(),
            now=event.now,
            owner_changed=owner_changed,
        )
        return
    if changed:
        connection.updated_at = event.now
        await store.save(tx, connection)
    status = connection.status
    await store.record_history(
        tx, [_history(event, connection, status, status, ignored, owner_changed=owner_changed)]
    )


async def record_sync_result(
    tx: Transaction, *, delivery_id: int | None, payload: Mapping[str, Any], envelope: Envelope
) -> DeliveryOutcome:
    """Keep the last sync's outcome on the connection, so readers can tell if data is fresh.

    A failed sync is also kept in the history (and so published as ``connection.sync_failed``);
    a successful one only updates the connection: syncs succeed often and change nothing else.
    """
    if not envelope.connection_id or not envelope.integration_id:
        return DeliveryOutcome.RECORDED
    _, error_description = _error(payload)
    now = utcnow()
    name = clean_text(payload.get("syncName"))
    model = clean_text(payload.get("model"))
    updated = await tx.fetchall(
        RECORD_SYNC if envelope.environment is None else RECORD_SYNC_IN_ENVIRONMENT,
        {
            "name": name,
            "model": model,
            "success": envelope.success,
            "error": None if envelope.success else error_description,
            "now": now,
            "connection_id": envelope.connection_id,
            "integration_id": envelope.integration_id,
            "environment": envelope.environment,
        },
    )
    if updated and envelope.success is False:
        detail = {"sync_name": name, "model": model}
        await store.record_history(
            tx,
            [
                store.history_row(
                    Connection(*row),
                    source=SOURCE,
                    action="sync",
                    success=False,
                    delivery_id=delivery_id,
                    detail=detail,
                    now=now,
                )
                for row in updated
            ],
        )
    return DeliveryOutcome.APPLIED if updated else DeliveryOutcome.RECORDED
