"""Initial schema: partitioned events, api_keys, ingest_batches, dead_letters.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Range partitioned by day on the event's own timestamp. The primary key
    # must contain the partition key, which is also why dedup is on
    # (timestamp, event_id): a retry carries the same timestamp, so it meets
    # its first copy in the same partition.
    op.execute(
        """
        CREATE TABLE events (
            "timestamp"  timestamptz NOT NULL,
            event_id     uuid        NOT NULL,
            product      text        NOT NULL,
            name         text        NOT NULL,
            user_id      text,
            properties   jsonb       NOT NULL DEFAULT '{}'::jsonb,
            context      jsonb,
            received_at  timestamptz NOT NULL,
            stored_at    timestamptz NOT NULL DEFAULT now(),
            batch_id     uuid,
            CONSTRAINT pk_events PRIMARY KEY ("timestamp", event_id)
        ) PARTITION BY RANGE ("timestamp")
        """
    )
    # Rows whose day has no partition yet land here instead of failing a batch.
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    op.execute(
        'CREATE INDEX ix_events_product_name_timestamp ON events (product, name, "timestamp")'
    )
    op.execute(
        'CREATE INDEX ix_events_product_user_id_timestamp ON events (product, user_id, "timestamp")'
    )

    op.execute(
        """
        CREATE TABLE api_keys (
            key_id      text        NOT NULL,
            product     text        NOT NULL,
            scopes      text[]      NOT NULL,
            key_hash    text        NOT NULL,
            label       text        NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now(),
            revoked_at  timestamptz,
            CONSTRAINT pk_api_keys PRIMARY KEY (key_id)
        )
        """
    )
    op.execute("CREATE INDEX ix_api_keys_product ON api_keys (product)")

    op.execute(
        """
        CREATE TABLE ingest_batches (
            batch_id       uuid        NOT NULL,
            status         text        NOT NULL,
            consumer       text        NOT NULL,
            stream_ids     text[]      NOT NULL,
            attempt        integer     NOT NULL,
            events         integer     NOT NULL,
            inserted       integer     NOT NULL,
            duplicates     integer     NOT NULL,
            dead_lettered  integer     NOT NULL DEFAULT 0,
            error          text,
            started_at     timestamptz NOT NULL,
            finished_at    timestamptz NOT NULL,
            copy_ms        integer,
            insert_ms      integer,
            total_ms       integer     NOT NULL,
            CONSTRAINT pk_ingest_batches PRIMARY KEY (batch_id)
        )
        """
    )
    op.execute("CREATE INDEX ix_ingest_batches_finished_at ON ingest_batches (finished_at)")
    op.execute(
        "CREATE INDEX ix_ingest_batches_status_finished_at ON ingest_batches (status, finished_at)"
    )

    op.execute(
        """
        CREATE TABLE dead_letters (
            id          bigserial   NOT NULL,
            stream_id   text        NOT NULL,
            product     text,
            error       text        NOT NULL,
            payload     text        NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_dead_letters PRIMARY KEY (id)
        )
        """
    )
    op.execute("CREATE INDEX ix_dead_letters_created_at ON dead_letters (created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE dead_letters")
    op.execute("DROP TABLE ingest_batches")
    op.execute("DROP TABLE api_keys")
    op.execute("DROP TABLE events")
