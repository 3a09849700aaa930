"""console: connections by status and deliveries by outcome, newest first

Revision ID: 0004
Revises: 0003

The console lists connections of one status (``auth_error``, ``deleted``) and deliveries of one
outcome (``failed``), which are rare: without these indexes such a listing walked the primary
key backwards through every other row (50 ms for deleted connections among a million, 100 ms
for failed deliveries, growing with the tables); with them, it reads the rows it shows.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.create_index("ix_connections_status_id", ["status", "id"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_outcome_id", ["outcome", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_outcome_id")
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_index("ix_connections_status_id")
