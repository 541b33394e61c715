"""Rollups: events per day, user and name, and per day, user and declared property value.

Revision ID: 0010_user_daily_names_props
Revises: 0009_clock_skew
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010_user_daily_names_props"
down_revision: str | None = "0009_clock_skew"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Distinct users per name or per property value over a range of days are
    # counted from these (top events and top values with users), not from every
    # raw event. `user_id` is NULL on the row of a day's events without a user,
    # so the events metric sums from the same rows. No unique index: a refresh
    # deletes a day's rows before it inserts them again (storage.rollups), and
    # a long property value would not fit in a btree entry.
    op.execute(
        """
        CREATE TABLE rollup_user_daily_names (
            product  text    NOT NULL,
            day      date    NOT NULL,
            name     text    NOT NULL,
            user_id  text,
            events   bigint  NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_rollup_user_daily_names_product_day "
        "ON rollup_user_daily_names (product, day)"
    )
    op.execute(
        """
        CREATE TABLE rollup_user_daily_props (
            product  text    NOT NULL,
            key      text    NOT NULL,
            day      date    NOT NULL,
            value    text,
            user_id  text,
            events   bigint  NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_rollup_user_daily_props_product_key_day "
        "ON rollup_user_daily_props (product, key, day)"
    )
    # Every day with events gets its rows now, from the raw events (a marked
    # day is read raw, and rewritten by the refresh that takes its last mark).
    # A day already past a product's retention cutoff gets the rows its
    # retention left. Flushers and refreshes of the previous version must be
    # stopped first: they would rewrite a day without these rows.
    op.execute(
        """
        INSERT INTO rollup_user_daily_names (product, day, name, user_id, events)
        SELECT product, ("timestamp" AT TIME ZONE 'UTC')::date, name, user_id, count(*)
        FROM events GROUP BY 1, 2, 3, 4
        """
    )
    op.execute(
        """
        INSERT INTO rollup_user_daily_props (product, key, day, value, user_id, events)
        SELECT e.product, k.key, (e."timestamp" AT TIME ZONE 'UTC')::date,
               e.properties #>> string_to_array(k.key, '.'), e.user_id, count(*)
        FROM events e CROSS JOIN rollup_property_keys k
        GROUP BY 1, 2, 3, 4, 5
        """
    )


def downgrade() -> None:
    # Derived data only.
    op.execute("DROP TABLE rollup_user_daily_props")
    op.execute("DROP TABLE rollup_user_daily_names")
