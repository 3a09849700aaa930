"""Every shape of the API, declared once as a pydantic model: bodies, queries and answers.

``/openapi.json`` is generated from these models (``app.api.openapi``). Request bodies and query
strings are validated by them. Answers are built as plain dicts by the ``*_json`` functions
beside their model and written by pydantic-core (``app.responses``): building the models
themselves measured 1.5x slower than the dicts they replace on a 50-row lookup, and plain dicts
written by pydantic-core three times faster (README, "Benchmarks"). The schemathesis tests check
that every answer validates against its model's schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.connections.feed import EventType
from app.connections.model import (
    ATTRIBUTION_FIELDS,
    INTEGRATION_ID,
    MAX_TAG_VALUE,
    MAX_TAGS,
    ConnectionStatus,
    check_tag_key,
    is_email,
)
from app.connections.public import connection_json as connection_json  # re-exported
from app.connections.queries import HistoryEntry, IntegrationSummary
from app.connections.sessions import SESSION_TAG
from app.subscriptions.model import (
    MAX_URL_LENGTH,
    Attempt,
    Outcome,
    Subscription,
    SubscriptionStatus,
    check_url,
)
from app.subscriptions.signing import webhook_id

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_VALUE_LENGTH = 255

# A value of a request body, taken as sent: 1 to 255 characters, not blank, no NUL (which
# Postgres text cannot hold, and which no ID or tag at Nango contains).
Text = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")
]
# A query filter: what can be stored, compared exactly.
Filter = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_VALUE_LENGTH, pattern=r"^[^\x00]*$")
]


class Answer(BaseModel):
    """An answer: every field always present (null when unknown), nothing else."""

    model_config = ConfigDict(extra="forbid")


class Body(BaseModel):
    """A request body: strictly typed, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """A query string: values arrive as text; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")


# Connections --------------------------------------------------------------------------------


class EndUser(Answer):
    id: str | None
    email: str | None
    display_name: str | None


class Organization(Answer):
    id: str | None
    display_name: str | None


class AuthError(Answer):
    """Why the credentials do not work (set while the status is ``auth_error``)."""

    type: str | None
    description: str | None
    since: datetime | None


class LastSync(Answer):
    name: str | None
    model: str | None
    success: bool | None
    at: datetime | None
    error: str | None


class ConnectionPublic(Answer):
    model_config = ConfigDict(title="Connection")

    connection_id: str
    integration_id: str = Field(description="Nango's providerConfigKey")
    provider: str | None
    environment: str
    auth_mode: str | None
    end_user: EndUser
    organization: Organization
    tags: dict[str, str]
    status: ConnectionStatus
    error: AuthError | None
    last_sync: LastSync | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    connection_config: dict[str, Any] | None = Field(
        description="Nango's per-connection configuration (e.g. subdomain, instance_url), keys"
        " naming a secret, token, password, private key or credential left out; null until"
        " fetched from Nango"
    )
    metadata: dict[str, Any] | None = Field(
        description="the connection's metadata at Nango; null until fetched from Nango"
    )


class ConnectionPage(Answer):
    data: list[ConnectionPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class ConnectionAnswer(Answer):
    data: ConnectionPublic


class DeliveryBrief(Answer):
    id: int
    received_at: datetime
    webhook_type: str | None
    operation: str | None
    success: bool | None
    outcome: str


class HistoryEntryPublic(Answer):
    model_config = ConfigDict(title="HistoryEntry")

    id: int
    source: str = Field(examples=["webhook", "reconcile", "api", "import"])
    action: str = Field(examples=["creation", "refresh", "deletion"])
    success: bool | None
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any]
    delivery: DeliveryBrief | None = Field(description="The webhook delivery that caused it")
    created_at: datetime


def history_json(entry: HistoryEntry) -> dict[str, Any]:
    delivery = entry.delivery
    return {
        "id": entry.id,
        "source": entry.source,
        "action": entry.action,
        "success": entry.success,
        "from_status": entry.from_status,
        "to_status": entry.to_status,
        "detail": entry.detail,
        "delivery": None
        if delivery is None
        else {
            "id": delivery.id,
            "received_at": delivery.received_at,
            "webhook_type": delivery.webhook_type,
            "operation": delivery.operation,
            "success": delivery.success,
            "outcome": delivery.outcome,
        },
        "created_at": entry.created_at,
    }


class HistoryPage(Answer):
    data: list[HistoryEntryPublic]
    next_cursor: str | None


class IntegrationSummaryPublic(Answer):
    model_config = ConfigDict(title="IntegrationSummary")

    integration_id: str
    environment: str
    connected: bool = Field(description="an active connection exists")
    needs_reauthorization: bool = Field(description="no active connection; the newest is broken")
    connection_count: int = Field(ge=1)
    connection: ConnectionPublic = Field(
        description="the one to use: the newest active one, else the newest broken one"
    )


class EndUserSummary(Answer):
    end_user_id: str
    integrations: list[IntegrationSummaryPublic]


class SummaryAnswer(Answer):
    data: EndUserSummary


def summary_json(end_user_id: str, summaries: list[IntegrationSummary]) -> dict[str, Any]:
    return {
        "data": {
            "end_user_id": end_user_id,
            "integrations": [
                {
                    "integration_id": item.integration_id,
                    "environment": item.environment,
                    "connected": item.connected,
                    "needs_reauthorization": item.needs_reauthorization,
                    "connection_count": item.connection_count,
                    "connection": connection_json(item.connection),
                }
                for item in summaries
            ],
        }
    }


# Queries ------------------------------------------------------------------------------------


class PageQuery(Query):
    """`limit` and `cursor`, for every paginated list."""

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="page size")
    cursor: str | None = Field(
        None, min_length=1, description="`next_cursor` of the previous page (opaque, signed)"
    )


class ConnectionListQuery(PageQuery):
    """``GET /v1/connections``: every filter given must match (``tag[KEY]`` too, see there)."""

    end_user_id: Filter | None = Field(None, description="owner's user ID")
    organization_id: Filter | None = Field(None, description="owner's organization ID")
    integration_id: Filter | None = Field(None, description="Nango integration (providerConfigKey)")
    environment: Filter | None = Field(None, description="Nango environment, e.g. prod")
    status: list[ConnectionStatus] | None = Field(
        None, description="comma-separated; default active,auth_error (deleted left out)"
    )
    attributed: bool | None = Field(
        None, description="false: connections with neither an end user nor an organization"
    )


class Selector(Query):
    """Which connection a path's ID names, when a legacy ID is used by several."""

    integration_id: Filter | None = Field(
        None, description="choose among connections sharing a legacy ID"
    )
    environment: Filter | None = Field(
        None, description="choose among connections sharing a legacy ID"
    )


class HistoryQuery(Selector, PageQuery):
    pass


class WriteSelector(Query):
    """Which connection an action names (in ``NANGO_ENVIRONMENT``, whose secret key acts)."""

    integration_id: Filter | None = Field(
        None, description="choose among connections sharing a legacy ID"
    )


class SummaryQuery(Query):
    environment: Filter | None = Field(None, description="only this Nango environment")


class NoQuery(Query):
    pass


# Bodies -------------------------------------------------------------------------------------


T = TypeVar("T", str, str | None)


def checked_tags(value: dict[str, T]) -> dict[str, T]:
    """Tags as Nango takes them (keys lowercased); a value of None removes a tag."""
    tags: dict[str, T] = {}
    for key, tag in value.items():
        problem = check_tag_key(key)
        if problem:
            raise ValueError(f"tag key {key!r} {problem}")
        if tag is not None and not 1 <= len(tag) <= MAX_TAG_VALUE:
            raise ValueError(f"tag {key!r} must be 1 to {MAX_TAG_VALUE} characters")
        # Nango reports tag keys in lowercase; two keys differing in case would collide.
        lowered = key.lower()
        if lowered in tags:
            raise ValueError(f"tag key {key!r} repeats another key that differs only in case")
        if lowered in ATTRIBUTION_FIELDS:
            raise ValueError(f"set {lowered} as a field of its own, not as a tag")
        if lowered == SESSION_TAG:
            raise ValueError(f"{SESSION_TAG} is set by this service")
        tags[lowered] = tag
    return tags


def checked_email(value: str | None) -> str | None:
    # Nango's own check: refused here with a 400 rather than by Nango with a 502.
    if value is not None and not is_email(value):
        raise ValueError("not an email address Nango accepts")
    return value


class ConnectSessionRequest(Body):
    end_user_id: Text
    end_user_email: Text | None = None
    end_user_display_name: Text | None = None
    organization_id: Text | None = None
    organization_display_name: Text | None = None
    allowed_integrations: list[Text] | None = Field(default=None, min_length=1, max_length=100)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("end_user_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return checked_email(value)

    @field_validator("allowed_integrations")
    @classmethod
    def _integrations(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if not INTEGRATION_ID.match(item):
                raise ValueError(
                    f"{item!r} is not an integration ID: letters, digits and ~:.@ _- only"
                )
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        return checked_tags(value)

    @model_validator(mode="after")
    def _tag_count(self) -> ConnectSessionRequest:
        # One of Nango's ten is the session's own (SESSION_TAG).
        if len(self.nango_tags()) > MAX_TAGS - 1:
            raise ValueError(
                f"at most {MAX_TAGS - 1} tags in all, counting end_user_* and organization_*"
                f" fields (the tenth is {SESSION_TAG})"
            )
        return self

    def nango_tags(self) -> dict[str, str]:
        built = {name: getattr(self, name) for name in ATTRIBUTION_FIELDS}
        return {**{k: v for k, v in built.items() if v is not None}, **self.tags}


class ConnectionUpdateRequest(Body):
    """``PATCH /v1/connections/{id}``: owner fields to set, tags to set (or remove with null)."""

    end_user_id: Text | None = None
    end_user_email: Text | None = None
    end_user_display_name: Text | None = None
    organization_id: Text | None = None
    organization_display_name: Text | None = None
    tags: dict[str, str | None] = Field(
        default_factory=dict, description="a value sets a tag, null removes it; others are kept"
    )

    @field_validator("end_user_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return checked_email(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        return checked_tags(value)

    @model_validator(mode="after")
    def _something(self) -> ConnectionUpdateRequest:
        if not self.owner() and not self.tags:
            raise ValueError("name at least one owner field or tag to change")
        return self

    def owner(self) -> dict[str, str]:
        return {
            name: value for name in ATTRIBUTION_FIELDS if (value := getattr(self, name)) is not None
        }


class MetadataRequest(Body):
    metadata: dict[str, Any] = Field(
        description="JSON object; PATCH merges its top-level keys, PUT replaces the whole"
    )


class ReconnectRequest(Body):
    integration_id: Text | None = None


class LegacyHmacRequest(Body):
    integration_id: Text
    connection_id: Text


class ConnectSession(Answer):
    token: str
    connect_link: str
    expires_at: datetime


class NewConnectSession(ConnectSession):
    model_config = ConfigDict(title="NewConnectSession")

    session_id: str = Field(
        description="ask `GET /v1/connect-sessions/{session_id}` whether it produced a connection"
    )


class ConnectSessionWait(Query):
    wait: int = Field(
        0, ge=0, le=30, description="seconds to hold the request open while the session is pending"
    )


class ConnectSessionOutcome(Answer):
    status: Literal["pending", "connected", "expired"]
    connection: ConnectionPublic | None = Field(description="the connection it produced")


class ConnectSessionStatus(Answer):
    data: ConnectSessionOutcome


class FeedQuery(Query):
    """Which events a consumer wants (every filter given must match)."""

    type: list[EventType] | None = Field(None, description="event types, comma-separated")
    end_user_id: Filter | None = Field(None, description="owner's user ID")
    organization_id: Filter | None = Field(None, description="owner's organization ID")
    integration_id: Filter | None = Field(None, description="Nango integration (providerConfigKey)")


class EventQuery(FeedQuery):
    after: int = Field(
        0, ge=0, le=2**63 - 1, description="`next_after` of the previous page (0: from the start)"
    )
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="page size")


class StreamQuery(FeedQuery):
    after: int | None = Field(
        None, ge=0, le=2**63 - 1, description="start after this event (`Last-Event-ID` wins)"
    )


class FeedEventPublic(Answer):
    model_config = ConfigDict(title="Event")

    id: int = Field(description="increasing; resume after the last one you handled")
    type: EventType
    occurred_at: datetime
    source: str = Field(examples=["webhook", "reconcile", "api", "import"])
    delivery_id: int | None = Field(description="the Nango webhook delivery that caused it")
    connection: ConnectionPublic = Field(description="the connection as it was after the change")


class EventPage(Answer):
    data: list[FeedEventPublic]
    next_after: int = Field(description="pass as `after` for the next page")


class ReconcileCountsPublic(Answer):
    model_config = ConfigDict(title="ReconcileCounts")

    seen: int = Field(ge=0)
    created: int = Field(ge=0)
    updated: int = Field(ge=0)
    deleted: int = Field(ge=0)
    unattributed: int = Field(ge=0)
    details: int = Field(
        ge=0, description="metadata taken from the listing, and configurations fetched from Nango"
    )


class ReconcileAnswer(Answer):
    environment: str
    counts: ReconcileCountsPublic


class LegacyHmac(Answer):
    hmac: str = Field(pattern="^[0-9a-f]{64}$")


# Subscriptions ------------------------------------------------------------------------------

SubscribedType = Literal[
    "connection.created",
    "connection.attributed",
    "connection.auth_error",
    "connection.recovered",
    "connection.deleted",
    "connection.restored",
    "connection.metadata_updated",
    "connection.sync_failed",
]
SubscriberUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_URL_LENGTH),
    Field(examples=["https://billing.internal.example/webhooks/connections"]),
]
MAX_REPLAY = 10_000


def _url(value: str | None) -> str | None:
    # https-only, when SUBSCRIPTION_REQUIRE_HTTPS says so, is checked by the handler.
    problem = None if value is None else check_url(value, require_https=False)
    if problem:
        raise ValueError(problem)
    return value


class SubscriptionFilters(Body):
    """Every filter given must match an event's connection (after the change)."""

    end_user_id: Text | None = None
    organization_id: Text | None = None
    integration_id: Text | None = None


class SubscriptionRequest(Body):
    url: SubscriberUrl
    event_types: list[SubscribedType] | None = Field(
        None, min_length=1, description="only these types; absent or null: every type"
    )
    filters: SubscriptionFilters | None = None

    _check_url = field_validator("url")(_url)


class SubscriptionChange(Body):
    """Fields given are changed; ``event_types: null`` means every type again."""

    status: Literal["active", "paused"] | None = Field(
        None, description="paused: deliveries queue up; active: resume (a disabled one too)"
    )
    url: SubscriberUrl | None = None
    event_types: list[SubscribedType] | None = Field(None, min_length=1)
    filters: SubscriptionFilters | None = Field(None, description="replaces every filter")

    _check_url = field_validator("url")(_url)

    @model_validator(mode="after")
    def _no_null(self) -> SubscriptionChange:
        for name in ("status", "url", "filters"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class ReplayRequest(Body):
    after: int = Field(ge=0, description="queue the events after this event ID again")
    limit: int = Field(MAX_REPLAY, ge=1, le=MAX_REPLAY, description="at most this many")


class SubscriptionFiltersPublic(Answer):
    model_config = ConfigDict(title="SubscriptionFilters")

    end_user_id: str | None
    organization_id: str | None
    integration_id: str | None


class SubscriptionPublic(Answer):
    model_config = ConfigDict(title="Subscription")

    id: int
    url: str
    event_types: list[str] | None = Field(description="null: every type")
    filters: SubscriptionFiltersPublic
    status: SubscriptionStatus
    failing_since: datetime | None = Field(description="first failure since the last success")
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SubscriptionCreated(SubscriptionPublic):
    model_config = ConfigDict(title="SubscriptionCreated")

    secret: str = Field(
        pattern="^whsec_[A-Za-z0-9+/]+=*$",
        description="the signing secret, shown this once: it cannot be read back",
    )


def subscription_json(subscription: Subscription) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "url": subscription.url,
        "event_types": subscription.event_types,
        "filters": {
            "end_user_id": subscription.end_user_id,
            "organization_id": subscription.organization_id,
            "integration_id": subscription.integration_id,
        },
        "status": subscription.status,
        "failing_since": subscription.failing_since,
        "disabled_at": subscription.disabled_at,
        "created_at": subscription.created_at,
        "updated_at": subscription.updated_at,
    }


class SubscriptionAnswer(Answer):
    data: SubscriptionPublic


class SubscriptionCreatedAnswer(Answer):
    data: SubscriptionCreated


class SubscriptionList(Answer):
    data: list[SubscriptionPublic]


class AttemptPublic(Answer):
    model_config = ConfigDict(title="SubscriptionAttempt")

    id: int
    event_id: int
    webhook_id: str = Field(description="the webhook-id header: the same on every retry")
    try_number: int = Field(ge=1)
    attempted_at: datetime
    outcome: Outcome
    status_code: int | None
    latency_ms: int = Field(ge=0)
    response_body: str | None = Field(description="the first 1 KB of the subscriber's answer")
    error: str | None = Field(examples=["timeout", "ConnectError", "secret_key_changed"])


def attempt_json(subscription_id: int, attempt: Attempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "event_id": attempt.event_id,
        "webhook_id": webhook_id(subscription_id=subscription_id, event_id=attempt.event_id),
        "try_number": attempt.try_number,
        "attempted_at": attempt.attempted_at,
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "response_body": attempt.response_body,
        "error": attempt.error,
    }


class AttemptPage(Answer):
    data: list[AttemptPublic] = Field(description="newest first")
    next_cursor: str | None


class Replayed(Answer):
    queued: int = Field(ge=0)
    last_event_id: int | None = Field(
        description="the last event queued: replay after it for more when `queued` was `limit`"
    )


class ReplayAnswer(Answer):
    data: Replayed


# Operations ---------------------------------------------------------------------------------


class ErrorDetail(Answer):
    code: str = Field(examples=["invalid_parameter"])
    message: str
    details: dict[str, Any] | None = None


class ErrorAnswer(Answer):
    model_config = ConfigDict(title="Error")

    error: ErrorDetail


class Health(Answer):
    status: Literal["ok"]


class Readiness(Answer):
    status: Literal["ok", "unavailable"]
    schema_revision: str | None = None
    reason: str | None = None


class WebhookAnswer(Answer):
    status: str = Field(description="applied, recorded, duplicate or failed")
    delivery_id: int | None
