"""Events keep the sender's clock skew and their time corrected for it.

Revision ID: 0009_clock_skew
Revises: 0008_event_ids
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_clock_skew"
down_revision: str | None = "0008_event_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds them to every partition
    # without rewriting a row. Existing rows (and requests that do not say when
    # they were sent) keep NULL in both.
    op.execute(
        "ALTER TABLE events ADD COLUMN corrected_timestamp timestamptz, "
        "ADD COLUMN clock_skew_ms bigint"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE events DROP COLUMN corrected_timestamp, DROP COLUMN clock_skew_ms")
