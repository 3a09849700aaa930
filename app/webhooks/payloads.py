"""Reading webhook bodies: the facts the inbox stores and the state machine applies.

Body shapes: docs/nango.md section 4. New ``type`` values appear without notice, and
an unattributed forward is the provider's raw payload with no ``type`` at all: both are stored
and acknowledged, never refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.connections.model import clean_text


class InvalidBody(ValueError):
    """The verified body is not a UTF-8 JSON document."""


def _parse_int(literal: str) -> int | Decimal:
    try:
        return int(literal)
    except ValueError:
        # Python refuses integer literals longer than its digit limit (4300), yet they are
        # valid JSON: refusing them with a 4xx would make Nango drop the delivery for good.
        return Decimal(literal)


def parse_body(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        return json.loads(text, parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError; RecursionError, nesting deeper than Python's stack.
        raise InvalidBody(type(error).__name__) from None


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every delivery is indexed by in the inbox."""

    webhook_type: str
    operation: str | None
    success: bool | None
    environment: str | None
    integration_id: str | None
    connection_id: str | None


def read_envelope(payload: Any, *, environment: str | None = None) -> Envelope:
    """The facts of a body; ``environment`` stands in when the body names none (only auth
    bodies carry one: see ``app.webhooks.signature.environment_of``)."""
    if not isinstance(payload, Mapping):
        return Envelope("unknown", None, None, environment, None, None)
    raw_type = payload.get("type")
    # No type at all: an unattributed forward, the provider's own payload, signed but unwrapped.
    webhook_type = "forward" if raw_type is None else clean_text(raw_type, limit=64) or "unknown"
    success = payload.get("success")
    return Envelope(
        webhook_type=webhook_type,
        operation=clean_text(payload.get("operation"), limit=64),
        success=success if isinstance(success, bool) else None,
        environment=clean_text(payload.get("environment")) or environment,
        integration_id=clean_text(payload.get("providerConfigKey")),
        connection_id=clean_text(payload.get("connectionId")),
    )


def body_environment(payload: Any) -> str | None:
    if isinstance(payload, Mapping):
        return clean_text(payload.get("environment"))
    return None
