"""Rollups for one user's summary: events per day, user and UTC hour; the day tables by user.

Revision ID: 0011_user_hours
Revises: 0010_user_daily_names_props
Create Date: 2026-12-09
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011_user_hours"
down_revision: str | None = "0010_user_daily_names_props"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The same expression as storage.rollups' (a migration keeps its own copy: it
# must build what its revision defines, whatever the code says later).
EVENTS_BY_HOUR = (
    "ARRAY["
    + ", ".join(
        f"""count(*) FILTER (WHERE extract(hour FROM "timestamp" AT TIME ZONE 'UTC') = {hour})"""
        for hour in range(24)
    )
    + "]::integer[]"
)


def upgrade() -> None:
    # One row per user and UTC day, its events per UTC hour of the day (24
    # counts, hour 0 first): a user's year is at most 366 rows, where the raw
    # events of a busy user sit about one per heap page (32,009 pages for the
    # 31,637 events of the busiest user of the 10M-event benchmark).
    op.execute(
        """
        CREATE TABLE rollup_user_hours (
            product         text       NOT NULL,
            day             date       NOT NULL,
            user_id         text       NOT NULL,
            events_by_hour  integer[]  NOT NULL,
            CONSTRAINT pk_rollup_user_hours PRIMARY KEY (product, day, user_id),
            CONSTRAINT ck_rollup_user_hours_24 CHECK (cardinality(events_by_hour) = 24)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_rollup_user_hours_product_user_day "
        "ON rollup_user_hours (product, user_id, day)"
    )
    # The summary reads one user's rows of the day tables too.
    op.execute(
        "CREATE INDEX ix_rollup_user_daily_names_product_user_day "
        "ON rollup_user_daily_names (product, user_id, day)"
    )
    op.execute(
        "CREATE INDEX ix_rollup_user_daily_props_product_key_user_day "
        "ON rollup_user_daily_props (product, key, user_id, day)"
    )
    # Every day with events gets its rows now, from the raw events, as in
    # 0010 (a marked day is read raw, and rewritten by the refresh that takes
    # its last mark). Flushers and refreshes of the previous version must be
    # stopped first: they would rewrite a day without these rows.
    op.execute(
        f"""
        INSERT INTO rollup_user_hours (product, day, user_id, events_by_hour)
        SELECT product, ("timestamp" AT TIME ZONE 'UTC')::date, user_id, {EVENTS_BY_HOUR}
        FROM events WHERE user_id IS NOT NULL
        GROUP BY 1, 2, 3
        """
    )


def downgrade() -> None:
    # Derived data only.
    op.execute("DROP INDEX ix_rollup_user_daily_props_product_key_user_day")
    op.execute("DROP INDEX ix_rollup_user_daily_names_product_user_day")
    op.execute("DROP TABLE rollup_user_hours")
