"""Rollups: distinct users per product and UTC day, ISO week and month.

Revision ID: 0006_rollup_users
Revises: 0005_rollups
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_rollup_users"
down_revision: str | None = "0005_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # `start` is the period's first UTC day: the day itself, the Monday of the
    # ISO week, the 1st of the month (see storage.rollups).
    op.execute(
        """
        CREATE TABLE rollup_users (
            product  text    NOT NULL,
            period   text    NOT NULL,
            start    date    NOT NULL,
            users    bigint  NOT NULL,
            CONSTRAINT pk_rollup_users PRIMARY KEY (product, period, start),
            CONSTRAINT ck_rollup_users_period CHECK (period IN ('day', 'week', 'month'))
        )
        """
    )
    # The periods already rolled up, from rollup_user_daily: only those with no
    # mark anywhere in them (a marked one gets its row when its last mark is
    # rolled up; reads compute a period without a row). Flushers and refreshes
    # of the previous version must be stopped first: they would rewrite a day's
    # user rows without its periods'.
    op.execute(
        """
        INSERT INTO rollup_users (product, period, start, users)
        SELECT product, period, start, users FROM (
            SELECT r.product, p.period, date_trunc(p.period, r.day::timestamp)::date AS start,
                   count(DISTINCT r.user_id) AS users
            FROM rollup_user_daily r CROSS JOIN (VALUES ('day'), ('week'), ('month')) AS p(period)
            GROUP BY 1, 2, 3
        ) AS u
        WHERE NOT EXISTS (
            SELECT 1 FROM rollup_dirty m
            WHERE m.product = u.product
              AND m.hour >= (u.start::timestamp AT TIME ZONE 'UTC')
              AND m.hour < ((u.start + ('1 ' || u.period)::interval) AT TIME ZONE 'UTC')
        )
        """
    )


def downgrade() -> None:
    # Derived data only: rollup_user_daily, which it was computed from, stays.
    op.execute("DROP TABLE rollup_users")
