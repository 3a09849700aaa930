"""connections: connection_config and metadata from Nango

Revision ID: 0002
Revises: 0004

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.types

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without a default: adding them rewrites no row on either database.
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("connection_config", app.db.types.NullableJSONDocument, nullable=True)
        )
        batch_op.add_column(sa.Column("metadata", app.db.types.NullableJSONDocument, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_column("metadata")
        batch_op.drop_column("connection_config")
