"""A connection as this service shows it to its clients and consumers.

The same object answers ``GET /v1/connections/{id}`` (its schema is ``ConnectionPublic`` in
``app.api.shapes``) and travels in every change-feed event (``app.connections.feed``), which is
written by the store: the builder lives here so that ``connections`` need not import ``api``.
"""

from __future__ import annotations

from typing import Any

from app.connections.model import Connection, ConnectionStatus


def connection_json(connection: Connection) -> dict[str, Any]:
    """``ConnectionPublic`` of a stored connection (datetimes stay datetimes)."""
    error = None
    if connection.status == ConnectionStatus.AUTH_ERROR or connection.error_type is not None:
        error = {
            "type": connection.error_type,
            "description": connection.error_description,
            "since": connection.error_since,
        }
    last_sync = None
    if connection.last_sync_name is not None or connection.last_sync_at is not None:
        last_sync = {
            "name": connection.last_sync_name,
            "model": connection.last_sync_model,
            "success": connection.last_sync_success,
            "at": connection.last_sync_at,
            "error": connection.last_sync_error,
        }
    return {
        "connection_id": connection.connection_id,
        "integration_id": connection.integration_id,
        "provider": connection.provider,
        "environment": connection.environment,
        "auth_mode": connection.auth_mode,
        "end_user": {
            "id": connection.end_user_id,
            "email": connection.end_user_email,
            "display_name": connection.end_user_display_name,
        },
        "organization": {
            "id": connection.organization_id,
            "display_name": connection.organization_display_name,
        },
        "tags": connection.tags,
        "status": connection.status,
        "error": error,
        "last_sync": last_sync,
        "created_at": connection.created_at,
        "updated_at": connection.updated_at,
        "deleted_at": connection.deleted_at,
        "connection_config": connection.connection_config,
        "metadata": connection.metadata,
    }
