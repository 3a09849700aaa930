"""What a connection is: its record, its statuses, who owns it, and text fit to store.

``Connection`` is one row of the ``connections`` table as the code reads and writes it; the
table itself is declared in ``app.db.tables`` (``tests/db/test_records.py`` keeps the two in
step). Rows are built by position from ``COLUMNS``, the cheapest way from a driver tuple to an
object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

MAX_TAG_KEY = 64
MAX_TAG_VALUE = 255
MAX_TAGS = 10  # Nango's limit per connection
MAX_TEXT = 255
# Nango's rule for tag keys (POST /connect/sessions); Nango stores and reports them lowercased.
TAG_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_\-./]*$")
# Nango's integration IDs (providerConfigKey; docs/nango.md, Corrections 7).
INTEGRATION_ID = re.compile(r"^[a-zA-Z0-9~:.@ _-]{1,255}$")
# The email check Nango applies to end_user_email (zod 4's z.string().email(), with .min(5);
# docs/nango.md, Corrections 7): ASCII, a top-level domain of at least two letters.
EMAIL = re.compile(
    r"(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}"
)


def is_email(value: str) -> bool:
    """Whether Nango takes ``value`` as an email address."""
    return len(value) >= 5 and EMAIL.fullmatch(value) is not None


class ConnectionStatus(StrEnum):
    ACTIVE = "active"
    AUTH_ERROR = "auth_error"
    DELETED = "deleted"


LIVE_STATUSES = (ConnectionStatus.ACTIVE.value, ConnectionStatus.AUTH_ERROR.value)


@dataclass(slots=True)
class Connection:
    """One stored connection. Identified by (environment, integration_id, connection_id)."""

    id: int
    environment: str
    integration_id: str
    connection_id: str
    provider: str | None
    auth_mode: str | None
    end_user_id: str | None
    end_user_email: str | None
    end_user_display_name: str | None
    organization_id: str | None
    organization_display_name: str | None
    tags: dict[str, str]
    status: str
    error_type: str | None
    error_description: str | None
    error_since: datetime | None
    last_sync_name: str | None
    last_sync_model: str | None
    last_sync_success: bool | None
    last_sync_at: datetime | None
    last_sync_error: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    # Nango's per-connection configuration without secret-named keys, and its metadata: None
    # until fetched from Nango (app.connections.details).
    connection_config: dict[str, Any] | None
    metadata: dict[str, Any] | None

    @property
    def attributed(self) -> bool:
        return self.end_user_id is not None or self.organization_id is not None


CONNECTION_FIELDS = tuple(item.name for item in fields(Connection))
# The column list every SELECT of a whole connection uses, in the record's order.
COLUMNS = ", ".join(CONNECTION_FIELDS)


def check_tag_key(key: str) -> str | None:
    """Why ``key`` is not a tag key Nango accepts, or None."""
    if not TAG_KEY.match(key) or len(key) > MAX_TAG_KEY:
        return (
            f"must start with a letter, use only letters, digits and _-./, and be at most"
            f" {MAX_TAG_KEY} characters"
        )
    return None


def clean_text(value: object, *, limit: int = MAX_TEXT) -> str | None:
    """A string fit for any column on both databases, or None.

    Postgres refuses NUL characters and lone surrogates, both of which valid JSON can carry.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    text = value.replace("\x00", "").strip()
    return text[:limit] if text else None


def clean_tags(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    tags: dict[str, str] = {}
    for raw_key, raw_value in value.items():
        key = clean_text(raw_key, limit=MAX_TAG_KEY)
        text = clean_text(raw_value, limit=4096)
        if key is not None and text is not None:
            tags[key] = text
    return tags


ATTRIBUTION_FIELDS = (
    "end_user_id",
    "end_user_email",
    "end_user_display_name",
    "organization_id",
    "organization_display_name",
)


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who owns a connection, as far as one source knows. Missing fields are None."""

    end_user_id: str | None = None
    end_user_email: str | None = None
    end_user_display_name: str | None = None
    organization_id: str | None = None
    organization_display_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def tags_with_owner(self) -> dict[str, str]:
        """The tags, with the owner fields among them under their tag names (``end_user_id``...,
        Nango's own convention): a tag filter then finds a connection whatever it came from
        (a webhook with only the deprecated ``endUser``, a CSV import, reconciliation)."""
        owner = {name: value for name in ATTRIBUTION_FIELDS if (value := getattr(self, name))}
        return {**self.tags, **owner}

    @classmethod
    def from_nango(cls, *, tags: object, end_user: object) -> Attribution:
        """Tags first (the current API), then the deprecated ``endUser``/``end_user`` object."""
        clean = clean_tags(tags)
        legacy: Mapping[str, Any] = end_user if isinstance(end_user, Mapping) else {}

        def pick(tag: str, *legacy_keys: str) -> str | None:
            if clean.get(tag):
                return clean_text(clean[tag])
            for name in legacy_keys:
                found = clean_text(legacy.get(name))
                if found:
                    return found
            return None

        return cls(
            end_user_id=pick("end_user_id", "endUserId", "id"),
            end_user_email=pick("end_user_email", "endUserEmail", "email"),
            end_user_display_name=pick("end_user_display_name", "displayName", "display_name"),
            organization_id=pick("organization_id", "organizationId", "organization_id"),
            organization_display_name=pick("organization_display_name"),
            tags=clean,
        )

    @classmethod
    def from_listing(cls, *, tags: object, end_user: object) -> Attribution:
        """``from_nango`` for Nango's connections API, whose ``end_user`` nests
        ``organization {id, display_name}`` (webhooks name ``organizationId`` flat)."""
        if isinstance(end_user, Mapping):
            organization = end_user.get("organization")
            if isinstance(organization, Mapping) and "organization_id" not in end_user:
                end_user = {**end_user, "organization_id": organization.get("id")}
        return cls.from_nango(tags=tags, end_user=end_user)
