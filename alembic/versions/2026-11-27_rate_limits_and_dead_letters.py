"""Per-key rate limits; dead letters that say what failed and can be replayed once.

Revision ID: 0002_rate_limits_dead_letters
Revises: 0001_initial
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_rate_limits_dead_letters"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: the deployment's default rate (RATE_LIMIT_EVENTS_PER_SECOND).
    op.execute("ALTER TABLE api_keys ADD COLUMN rate_limit_per_second double precision")
    op.execute(
        """
        ALTER TABLE dead_letters
            ADD COLUMN kind text NOT NULL DEFAULT 'entry',
            ADD COLUMN event_id uuid,
            ADD COLUMN deliveries integer,
            ADD COLUMN dedup_key text
        """
    )
    op.execute("UPDATE dead_letters SET dedup_key = stream_id || ':' || id")
    op.execute("ALTER TABLE dead_letters ALTER COLUMN dedup_key SET NOT NULL")
    # A redelivered poison entry or event is recorded once.
    op.execute("CREATE UNIQUE INDEX uq_dead_letters_dedup_key ON dead_letters (dedup_key)")


def downgrade() -> None:
    op.execute("DROP INDEX uq_dead_letters_dedup_key")
    op.execute(
        """
        ALTER TABLE dead_letters
            DROP COLUMN dedup_key, DROP COLUMN deliveries, DROP COLUMN event_id, DROP COLUMN kind
        """
    )
    op.execute("ALTER TABLE api_keys DROP COLUMN rate_limit_per_second")
