"""Rollups: events per hour and name, events per day and user, and the dirty marks.

Revision ID: 0005_rollups
Revises: 0004_product_retention
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_rollups"
down_revision: str | None = "0004_product_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Hours are UTC hour starts, days UTC calendar days (see storage.rollups).
    op.execute(
        """
        CREATE TABLE rollup_hourly (
            product  text        NOT NULL,
            hour     timestamptz NOT NULL,
            name     text        NOT NULL,
            events   bigint      NOT NULL,
            CONSTRAINT pk_rollup_hourly PRIMARY KEY (product, hour, name)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE rollup_user_daily (
            product  text    NOT NULL,
            day      date    NOT NULL,
            user_id  text    NOT NULL,
            events   bigint  NOT NULL,
            CONSTRAINT pk_rollup_user_daily PRIMARY KEY (product, day, user_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE rollup_dirty (
            product    text        NOT NULL,
            hour       timestamptz NOT NULL,
            marked_at  timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_rollup_dirty PRIMARY KEY (product, hour)
        )
        """
    )
    op.execute("CREATE INDEX ix_rollup_dirty_marked_at ON rollup_dirty (marked_at)")
    # Events stored before this revision have no rollup rows: every hour holding
    # some is marked, so reads take them raw until the worker has rolled them up.
    # Flushers of the previous version must be stopped first: rows they write
    # after this commits would be in no mark.
    op.execute(
        """
        INSERT INTO rollup_dirty (product, hour)
        SELECT DISTINCT product, date_trunc('hour', "timestamp", 'UTC') FROM events
        """
    )


def downgrade() -> None:
    # Derived data only: the events they were computed from stay.
    op.execute("DROP TABLE rollup_dirty")
    op.execute("DROP TABLE rollup_user_daily")
    op.execute("DROP TABLE rollup_hourly")
