"""Rollups for breakdowns by a property over whole days: events per key, UTC day, name and value.

Revision ID: 0012_daily_props
Revises: 0011_user_hours
Create Date: 2026-12-10
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_daily_props"
down_revision: str | None = "0011_user_hours"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # rollup_hourly_props summed over each UTC day: a 30-day breakdown by
    # `club_id` in the 10M-event benchmark read 213,751 hourly rows (a row per
    # hour, name and value), about 66,000 of these. As there, `value` is the
    # property as text, NULL for events without it, and no unique index: a
    # refresh deletes a day's rows before it writes them again.
    op.execute(
        """
        CREATE TABLE rollup_daily_props (
            product  text    NOT NULL,
            key      text    NOT NULL,
            day      date    NOT NULL,
            name     text    NOT NULL,
            value    text,
            events   bigint  NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_rollup_daily_props_product_key_day "
        "ON rollup_daily_props (product, key, day)"
    )
    # Every day none of whose hours is marked gets its rows now, from its
    # hourly rows (exact for such a day; a marked day is read hour by hour and
    # rewritten by the refresh that takes its last mark). Flushers and
    # refreshes of the previous version must be stopped first: they would
    # rewrite a day without these rows.
    op.execute(
        """
        INSERT INTO rollup_daily_props (product, key, day, name, value, events)
        SELECT r.product, r.key, (r.hour AT TIME ZONE 'UTC')::date, r.name, r.value, sum(r.events)
        FROM rollup_hourly_props r
        WHERE NOT EXISTS (
            SELECT 1 FROM rollup_dirty m
            WHERE m.product = r.product
              AND (m.hour AT TIME ZONE 'UTC')::date = (r.hour AT TIME ZONE 'UTC')::date
        )
        GROUP BY 1, 2, 3, 4, 5
        """
    )


def downgrade() -> None:
    # Derived data only.
    op.execute("DROP TABLE rollup_daily_props")
