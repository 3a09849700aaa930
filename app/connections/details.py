"""A connection's configuration and metadata from Nango, and the changes made through Nango.

Service functions, for the API and the console alike. Each takes the database and the Nango
client (whose secret key acts in one environment: the caller passes a connection of that
environment), calls Nango first, then writes in one short transaction through
``app.connections.store``, recording one history row per change:

- ``refresh_connection``: re-reads status, owner and tags, configuration and metadata
  (``GET /connections/{id}``); a connection Nango no longer has is marked deleted.
- ``write_metadata``: ``PATCH`` (merge) or ``POST`` (replace) ``/connections/metadata``.
- ``update_connection``: owner fields and tags, sent to ``PATCH /connections/{id}``, which
  replaces the tags: the merged set is sent.
- ``fetch_details``: configuration and metadata only (after a creation or override webhook, and
  reconcile's backstop), never a status.

Nango's ``credentials`` never get this far (``NangoConnection`` has no place for them) and the
configuration keeps no key whose name says it holds a secret (``app.nango.client``). History
details name the fields that changed, never their values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app.connections import store
from app.connections.model import (
    ATTRIBUTION_FIELDS,
    MAX_TAG_VALUE,
    MAX_TAGS,
    Attribution,
    Connection,
    ConnectionStatus,
    check_tag_key,
    is_email,
)
from app.db.database import Database, Transaction
from app.db.types import utcnow
from app.nango.client import NangoClient, NangoConnection, NangoRejected, merged_tags

# Nango's codes for "no such connection" / "no such integration" on these routes
# (docs/nango.md, Corrections 8 and 9).
UNKNOWN_AT_NANGO = frozenset({"not_found", "unknown_connection", "unknown_provider_config"})
# The one word Nango's connections API has for broken credentials (its other type is "sync").
AUTH_ERROR = "auth"

MetadataMode = Literal["merge", "replace"]


class UnknownAtNango(Exception):
    """Nango has no such connection (or integration): stored here, gone there."""


class TagsRefused(ValueError):
    """The tags a change would leave are not a set Nango accepts (count, keys or values)."""


class ConnectionVanished(LookupError):
    """The stored row disappeared between reading and locking it (only a test does that)."""


@dataclass(frozen=True)
class ConnectionUpdate:
    """An operator's change: owner fields to set, and tags to set (a value) or remove (None)."""

    owner: Mapping[str, str] = field(default_factory=dict)  # names from ATTRIBUTION_FIELDS
    tags: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.owner) - set(ATTRIBUTION_FIELDS)
        if unknown:
            raise ValueError(f"not owner fields: {sorted(unknown)}")


def metadata_of(found: NangoConnection) -> dict[str, Any]:
    """Nango answers ``null`` for a connection without metadata: known, and empty."""
    return dict(found.metadata or {})


def is_broken(errors: list[dict[str, Any]]) -> bool:
    """Only an ``auth`` entry means broken credentials (docs/nango.md, Correction 2)."""
    return any(entry.get("type") == AUTH_ERROR for entry in errors)


# Writing what Nango said ------------------------------------------------------------------------


def take_details(
    connection: Connection,
    *,
    connection_config: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
) -> list[str]:
    """Set what is known (None: not known, left alone), in memory; return the fields changed."""
    changed = []
    if connection_config is not None and connection.connection_config != connection_config:
        connection.connection_config = connection_config
        changed.append("connection_config")
    if metadata is not None and connection.metadata != metadata:
        connection.metadata = metadata
        changed.append("metadata")
    return changed


async def _locked(tx: Transaction, connection: Connection) -> Connection:
    locked = await store.lock_connection_by_pk(tx, connection.id)
    if locked is None:
        raise ConnectionVanished(f"connection {connection.id} is no longer stored")
    return locked


async def _record(
    tx: Transaction,
    connection: Connection,
    *,
    source: str,
    action: str,
    changed: list[str],
    now: datetime,
    from_status: str | None = None,
) -> None:
    """Save the connection and record one history row naming what changed (the store also
    publishes it to the change feed: app.connections.feed)."""
    connection.updated_at = now
    await store.save(tx, connection)
    row = store.history_row(
        connection,
        source=source,
        action=action,
        success=True,
        from_status=from_status,
        # Statuses only where one may have changed: a pair names a transition to the feed.
        to_status=None if from_status is None else connection.status,
        detail={"changed": changed},
        now=now,
        owner_changed=bool({"owner", *ATTRIBUTION_FIELDS}.intersection(changed)),
    )
    await store.record_history(tx, [row])


async def fetch_details(
    *, database: Database, nango: NangoClient, connection: Connection, source: str
) -> Connection | None:
    """Configuration and metadata from Nango, stored; None if Nango has no such connection.

    The status is left alone: deletions are the webhooks' and reconcile's to decide.
    """
    found = await nango.get_connection(connection.connection_id, connection.integration_id)
    if found is None:
        return None
    async with database.transaction() as tx:
        locked = await _locked(tx, connection)
        changed = take_details(
            locked, connection_config=found.connection_config, metadata=metadata_of(found)
        )
        if changed:
            await _record(
                tx, locked, source=source, action="details", changed=changed, now=utcnow()
            )
    return locked


# refresh ------------------------------------------------------------------------------------


def _take_status(connection: Connection, found: NangoConnection | None, now: datetime) -> bool:
    """Nango's word on the status, in memory; True if it changed. A stored error type (a
    webhook's, more precise than the API's ``auth``) is kept while the credentials stay broken."""
    if found is None:
        target: str = ConnectionStatus.DELETED
    elif is_broken(found.errors):
        target = ConnectionStatus.AUTH_ERROR
    else:
        target = ConnectionStatus.ACTIVE
    known_type = connection.status == ConnectionStatus.AUTH_ERROR and connection.error_type
    if connection.status == target and (target != ConnectionStatus.AUTH_ERROR or known_type):
        return False
    was_deleted = connection.status == ConnectionStatus.DELETED
    store.set_status(
        connection,
        target,
        error_type=connection.error_type or AUTH_ERROR,
        error_description=connection.error_description,
        now=now,
    )
    if was_deleted and target != ConnectionStatus.DELETED:
        connection.deleted_at = None  # Nango has it: the tombstone was wrong
    return True


async def refresh_connection(
    *, database: Database, nango: NangoClient, connection: Connection, source: str = "api"
) -> Connection:
    """Re-read the connection from Nango: status, owner and tags, configuration, metadata."""
    found = await nango.get_connection(connection.connection_id, connection.integration_id)
    now = utcnow()
    async with database.transaction() as tx:
        locked = await _locked(tx, connection)
        previous = locked.status
        changed = ["status"] if _take_status(locked, found, now) else []
        if found is not None:
            if found.provider and locked.provider != found.provider:
                locked.provider = found.provider
                changed.append("provider")
            owner = Attribution.from_listing(tags=found.tags, end_user=found.end_user)
            if await store.merge_attribution(tx, locked, owner):
                changed.append("owner")
            changed += take_details(
                locked, connection_config=found.connection_config, metadata=metadata_of(found)
            )
        if changed:
            await _record(
                tx,
                locked,
                source=source,
                action="refresh",
                changed=changed,
                now=now,
                from_status=previous,
            )
    return locked


# Writes through Nango ------------------------------------------------------------------------


@contextmanager
def _unknown_at_nango() -> Iterator[None]:
    """Nango's refusal for a connection (or integration) it has no longer, as UnknownAtNango."""
    try:
        yield
    except NangoRejected as error:
        if error.code in UNKNOWN_AT_NANGO:
            raise UnknownAtNango(error.message) from None
        raise


async def write_metadata(
    *,
    database: Database,
    nango: NangoClient,
    connection: Connection,
    metadata: Mapping[str, Any],
    mode: MetadataMode,
    source: str = "api",
) -> Connection:
    """Merge into (top-level keys, as Nango does) or replace the metadata at Nango, then here.

    A merge into metadata not known here yet reads the whole back from Nango.
    Raises UnknownAtNango when Nango has no such connection.
    """
    with _unknown_at_nango():
        await nango.update_metadata(
            connection.connection_id,
            connection.integration_id,
            metadata,
            mode="replace" if mode == "replace" else "merge",
        )
        found = None
        if mode == "merge" and connection.metadata is None:
            found = await nango.get_connection(connection.connection_id, connection.integration_id)
    async with database.transaction() as tx:
        locked = await _locked(tx, connection)
        if mode == "replace":
            result: dict[str, Any] | None = dict(metadata)
        elif found is not None:
            result = metadata_of(found)
        else:
            result = {**(locked.metadata or {}), **metadata}
        changed = take_details(locked, connection_config=None, metadata=result)
        # Recorded even when nothing changed here: Nango was written to.
        await _record(
            tx, locked, source=source, action=f"metadata_{mode}", changed=changed, now=utcnow()
        )
    return locked


def stored_tags_for_nango(connection: Connection) -> dict[str, str]:
    """The stored tags Nango accepts, with the owner's fields as tags where no tag names them
    and without an email address Nango would refuse: what a connection's tags are at Nango,
    sent again whole (Nango replaces the set)."""
    tags = {
        key: value
        for key, value in connection.tags.items()
        if check_tag_key(key) is None and 1 <= len(value) <= MAX_TAG_VALUE
    }
    for name in ATTRIBUTION_FIELDS:
        value = getattr(connection, name)
        if value and name not in tags:
            tags[name] = value
    if not is_email(tags.get("end_user_email") or "user@example.com"):
        # Nango checks the whole set it is sent; a stored address it refuses (an import's)
        # would make the change or the reconnect session fail.
        del tags["end_user_email"]
    return tags


def nango_tags(connection: Connection, update: ConnectionUpdate) -> dict[str, str]:
    """The whole tag set to send to Nango (which replaces it): the stored tags Nango accepts,
    the owner as tags, then the update. Raises TagsRefused if Nango would refuse the set."""
    tags = merged_tags(stored_tags_for_nango(connection), {**update.owner, **update.tags})
    if len(tags) > MAX_TAGS:
        raise TagsRefused(
            f"the connection would have {len(tags)} tags and Nango takes at most {MAX_TAGS}"
            " (owner fields count as tags): remove some"
        )
    return tags


async def update_connection(
    *,
    database: Database,
    nango: NangoClient,
    connection: Connection,
    update: ConnectionUpdate,
    source: str = "api",
) -> Connection:
    """Set the owner and tags at Nango (the whole merged set) and here.

    Unlike the merges from webhooks and reconcile, an operator may replace an owner field or
    remove a tag. Raises TagsRefused before calling Nango, UnknownAtNango after.
    """
    tags = nango_tags(connection, update)
    with _unknown_at_nango():
        await nango.update_connection_tags(
            connection.connection_id, connection.integration_id, current=tags, changes={}
        )
    async with database.transaction() as tx:
        locked = await _locked(tx, connection)
        changed = [name for name, value in update.owner.items() if getattr(locked, name) != value]
        for name in changed:
            setattr(locked, name, update.owner[name])
        new_tags = merged_tags(locked.tags, {**update.owner, **update.tags})
        if new_tags != locked.tags:
            locked.tags = new_tags
            await store.reindex_tags(tx, locked)
            changed.append("tags")
        await _record(tx, locked, source=source, action="update", changed=changed, now=utcnow())
    return locked
