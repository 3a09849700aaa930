"""subscriptions: endpoints, the delivery outbox and attempts (issue 16, push)

Revision ID: 0006
Revises: 0002

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import app.db.types

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The transactional outbox: appending a feed event queues one delivery per matching subscription
# in the same transaction (app/subscriptions/store.py keeps the same matching rules for replays).
# Paused subscriptions keep queueing; disabled ones do not.
_MATCH = """
    FROM subscriptions s
    WHERE s.status IN ('active', 'paused')
      AND (s.end_user_id IS NULL OR s.end_user_id = NEW.end_user_id)
      AND (s.organization_id IS NULL OR s.organization_id = NEW.organization_id)
      AND (s.integration_id IS NULL OR s.integration_id = NEW.integration_id)
      AND (s.event_types IS NULL OR {has_type})
    ORDER BY s.id;
"""
_QUEUE = """
    INSERT INTO subscription_deliveries
        (subscription_id, event_id, connection_pk, status, tries, next_attempt_at, created_at)
    SELECT s.id, NEW.id, NEW.connection_pk, 'pending', 0, NEW.occurred_at, NEW.occurred_at
"""
POSTGRES_FUNCTION = (
    "CREATE FUNCTION subscriptions_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    + _QUEUE
    + _MATCH.format(has_type="s.event_types ? NEW.type")
    + " RETURN NULL; END $$"
)
POSTGRES_TRIGGER = (
    "CREATE TRIGGER feed_events_fan_out AFTER INSERT ON feed_events"
    " FOR EACH ROW EXECUTE FUNCTION subscriptions_fan_out()"
)
SQLITE_TRIGGER = (
    "CREATE TRIGGER feed_events_fan_out AFTER INSERT ON feed_events BEGIN"  # noqa: S608
    + _QUEUE
    + _MATCH.format(
        has_type="EXISTS (SELECT 1 FROM json_each(s.event_types) t WHERE t.value = NEW.type)"
    )
    + " END"
)


def _create_trigger() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def _drop_trigger() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS feed_events_fan_out ON feed_events")
        op.execute("DROP FUNCTION IF EXISTS subscriptions_fan_out()")
    else:
        op.execute("DROP TRIGGER IF EXISTS feed_events_fan_out")


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table(
        "subscriptions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "event_types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("end_user_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("organization_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("integration_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("secret_salt", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("secret_check", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", app.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("failing_since", app.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", app.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_table(
        "subscription_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "subscription_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "connection_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", app.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_until", app.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lease_holder", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("created_at", app.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", app.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_deliveries_subscription_id_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_deliveries")),
    )
    with op.batch_alter_table("subscription_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscription_deliveries_pending_due",
            ["next_attempt_at"],
            unique=False,
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index(
            "ix_subscription_deliveries_pending_order",
            ["subscription_id", "connection_pk", "id"],
            unique=False,
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index(
            "ix_subscription_deliveries_subscription_id_event_id",
            ["subscription_id", "event_id"],
            unique=False,
        )

    op.create_table(
        "subscription_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "subscription_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("attempted_at", app.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["subscription_deliveries.id"],
            name=op.f("fk_subscription_attempts_delivery_id_subscription_deliveries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_attempts_subscription_id_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_attempts")),
    )
    with op.batch_alter_table("subscription_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subscription_attempts_delivery_id"), ["delivery_id"], unique=False
        )
        batch_op.create_index(
            "ix_subscription_attempts_subscription_id_id", ["subscription_id", "id"], unique=False
        )

    _create_trigger()


def downgrade() -> None:
    """Downgrade schema."""
    _drop_trigger()

    with op.batch_alter_table("subscription_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_attempts_subscription_id_id")
        batch_op.drop_index(batch_op.f("ix_subscription_attempts_delivery_id"))

    op.drop_table("subscription_attempts")
    with op.batch_alter_table("subscription_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_deliveries_subscription_id_event_id")
        batch_op.drop_index(
            "ix_subscription_deliveries_pending_order",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )
        batch_op.drop_index(
            "ix_subscription_deliveries_pending_due",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )

    op.drop_table("subscription_deliveries")
    op.drop_table("subscriptions")
