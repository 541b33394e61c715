"""An event id is stored once per product, whatever timestamps its resends carry.

Revision ID: 0008_event_ids
Revises: 0007_rollup_properties
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_event_ids"
down_revision: str | None = "0007_rollup_properties"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# settings.IDENTITY_WINDOW_DAYS's default when this was written: the ids of the
# events received in that window are remembered from the start.
BACKFILL_DAYS = 7


def upgrade() -> None:
    # `events` is partitioned by day of `timestamp`, so its primary key must hold
    # the timestamp: an id resent with another timestamp (a retry that left it
    # out and got a new receive time, a client that stamps each attempt) was a
    # second row. This table remembers which timestamp an id was stored under;
    # the flusher claims ids here in the same transaction as the rows, and
    # stores only the events whose claim it made (see storage.bulk_writer).
    # Rows older than the window (by `received_at`) are pruned by the flusher.
    # The key leads with the uuid: its comparisons are byte compares, and two
    # ids rarely tie, so the product's (collation-aware) text is seldom read.
    op.execute(
        """
        CREATE TABLE event_ids (
            product      text        NOT NULL,
            event_id     uuid        NOT NULL,
            "timestamp"  timestamptz NOT NULL,
            received_at  timestamptz NOT NULL,
            CONSTRAINT pk_event_ids PRIMARY KEY (event_id, product)
        )
        """
    )
    op.execute("CREATE INDEX ix_event_ids_received_at ON event_ids (received_at)")
    # The recent events' ids, each under the timestamp it was stored with
    # (the earliest, should an id already have been stored twice).
    op.execute(
        f"""
        INSERT INTO event_ids (product, event_id, "timestamp", received_at)
        SELECT DISTINCT ON (product, event_id) product, event_id, "timestamp", received_at
        FROM events
        WHERE received_at >= now() - interval '{BACKFILL_DAYS} days'
        ORDER BY product, event_id, "timestamp"
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE event_ids")
