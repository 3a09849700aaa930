"""Where a connection's state changes in response to a webhook.

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
- Attribution is merged and never erased (see ``app.connections.store``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.connections.store import (
    Attribution,
    change_status,
    clean_text,
    lock_connection,
    merge_attribution,
    record_event,
)
from app.db.models import Connection, ConnectionStatus, DeliveryOutcome
from app.db.types import utcnow
from app.webhooks.payloads import Envelope

SOURCE = "webhook"


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
    session: AsyncSession,
    *,
    delivery_id: int,
    payload: Any,
    envelope: Envelope,
    default_environment: str,
) -> DeliveryOutcome:
    if not isinstance(payload, Mapping):
        return DeliveryOutcome.RECORDED
    if envelope.webhook_type == "auth":
        return await apply_auth_event(
            session,
            delivery_id=delivery_id,
            payload=payload,
            envelope=envelope,
            default_environment=default_environment,
        )
    if envelope.webhook_type == "sync":
        return await record_sync_result(session, payload=payload, envelope=envelope)
    return DeliveryOutcome.RECORDED


async def apply_auth_event(
    session: AsyncSession,
    *,
    delivery_id: int,
    payload: Mapping[str, Any],
    envelope: Envelope,
    default_environment: str,
) -> DeliveryOutcome:
    operation = envelope.operation or ""
    target = _target(operation, envelope.success)
    if target is None or not envelope.connection_id or not envelope.integration_id:
        return DeliveryOutcome.RECORDED

    now = utcnow()
    attribution = Attribution.from_nango(tags=payload.get("tags"), end_user=payload.get("endUser"))
    connection, created = await lock_connection(
        session,
        environment=envelope.environment or default_environment,
        integration_id=envelope.integration_id,
        connection_id=envelope.connection_id,
        provider=clean_text(payload.get("provider")),
        auth_mode=clean_text(payload.get("authMode"), limit=64),
        status=target,
        attribution=attribution,
        now=now,
    )
    if not created:
        await merge_attribution(session, connection=connection, attribution=attribution)
    error_type, error_description = _error(payload)
    detail: dict[str, Any] = {"operation": operation}
    if error_type:
        detail["error_type"] = error_type

    if not created and connection.status == ConnectionStatus.DELETED:
        detail["ignored"] = "the connection is deleted"
        target = ConnectionStatus.DELETED
    elif not created and operation == "creation":
        # A creation for a known connection is late or repeated; what came after it stands.
        detail["ignored"] = "the connection already exists"
        target = ConnectionStatus(connection.status)

    if "ignored" in detail:
        await record_event(
            session,
            connection=connection,
            source=SOURCE,
            action=operation,
            success=envelope.success,
            from_status=connection.status,
            to_status=connection.status,
            delivery_id=delivery_id,
            detail=detail,
            now=now,
        )
        return DeliveryOutcome.APPLIED

    await change_status(
        session,
        connection=connection,
        status=target,
        source=SOURCE,
        action=operation,
        success=envelope.success,
        error_type=error_type,
        error_description=error_description,
        delivery_id=delivery_id,
        detail=detail,
        created=created,
        now=now,
    )
    return DeliveryOutcome.APPLIED


async def record_sync_result(
    session: AsyncSession, *, payload: Mapping[str, Any], envelope: Envelope
) -> DeliveryOutcome:
    """Keep the last sync's outcome on the connection, so readers can tell if data is fresh.

    Sync bodies carry no environment, so every live connection with that integration and
    connection ID is updated (legacy IDs repeat only across integrations, not within one).
    """
    if not envelope.connection_id or not envelope.integration_id:
        return DeliveryOutcome.RECORDED
    query = select(Connection).where(
        col(Connection.integration_id) == envelope.integration_id,
        col(Connection.connection_id) == envelope.connection_id,
        col(Connection.status) != ConnectionStatus.DELETED,
    )
    if envelope.environment:
        query = query.where(col(Connection.environment) == envelope.environment)
    connections = (await session.execute(query.with_for_update())).scalars().all()
    if not connections:
        return DeliveryOutcome.RECORDED
    now = utcnow()
    _, error_description = _error(payload)
    for connection in connections:
        connection.last_sync_name = clean_text(payload.get("syncName"))
        connection.last_sync_model = clean_text(payload.get("model"))
        connection.last_sync_success = envelope.success
        connection.last_sync_at = now
        connection.last_sync_error = None if envelope.success else error_description
        connection.updated_at = now
    return DeliveryOutcome.APPLIED
