"""The schema as SQLAlchemy Core tables, for queries and as the reference for migrations.

The migrations in ``alembic/versions`` create these; ``events`` is range
partitioned by day on ``timestamp``, which Core does not model, so partitions
are handled in ``storage.partitions``.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from labs_analytics.auth.keys import MAX_RATE_LIMIT_PER_SECOND, MIN_RATE_LIMIT_PER_SECOND

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

events = Table(
    "events",
    metadata,
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("product", Text, nullable=False),
    Column("name", Text, nullable=False),
    # "user" is a reserved word in PostgreSQL (`SELECT user` is the role name).
    Column("user_id", Text),
    Column("properties", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("context", JSONB),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("batch_id", UUID(as_uuid=True)),
    # The sender's clock skew and the time on ours, when the request said when
    # it was sent (events.correct_clock_skew).
    Column("corrected_timestamp", DateTime(timezone=True)),
    Column("clock_skew_ms", BigInteger),
    # The event's identity, and so the dedup key: an id is unique within its
    # product only (two products may send the same one); the timestamp is in
    # it because it is the partition key.
    PrimaryKeyConstraint("timestamp", "product", "event_id"),
    Index(None, "product", "name", "timestamp"),
    Index(None, "product", "user_id", "timestamp"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("product", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    # SHA-256 of the whole key: keys are 256-bit random, so a slow hash adds nothing.
    Column("key_hash", Text, nullable=False),
    Column("label", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    # Events per second; NULL means the deployment's default.
    Column("rate_limit_per_second", Double),
    Index(None, "product"),
    # NaN sorts above every number in PostgreSQL, so the range excludes it
    # and both infinities: the token bucket could use none of them.
    CheckConstraint(
        f"rate_limit_per_second IS NULL OR (rate_limit_per_second >= {MIN_RATE_LIMIT_PER_SECOND} "
        f"AND rate_limit_per_second <= {MAX_RATE_LIMIT_PER_SECOND:.0f})",
        name="rate_limit_per_second_valid",
    ),
)

ingest_batches = Table(
    "ingest_batches",
    metadata,
    Column("batch_id", UUID(as_uuid=True), primary_key=True),
    Column("status", Text, nullable=False),
    Column("consumer", Text, nullable=False),
    Column("stream_ids", ARRAY(Text), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("events", Integer, nullable=False),
    Column("inserted", Integer, nullable=False),
    Column("duplicates", Integer, nullable=False),
    Column("dead_lettered", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("copy_ms", Integer),
    Column("insert_ms", Integer),
    Column("total_ms", Integer, nullable=False),
    Index(None, "finished_at"),
    Index(None, "status", "finished_at"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("stream_id", Text, nullable=False),
    Column("product", Text),
    Column("error", Text, nullable=False),
    # JSON: the stream entry's fields (kind "entry") or one event's record (kind "event").
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("kind", Text, nullable=False, server_default="entry"),
    Column("event_id", UUID(as_uuid=True)),
    Column("deliveries", Integer),
    Column("dedup_key", Text, nullable=False),
    Index(None, "created_at"),
    Index("uq_dead_letters_dedup_key", "dedup_key", unique=True),
)

# Days of raw events a product keeps; a product without a row keeps everything.
# `storage.retention` enforces it (whole daily partitions dropped, else
# batched deletes).
product_retention = Table(
    "product_retention",
    metadata,
    Column("product", Text, primary_key=True),
    Column("keep_days", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("keep_days >= 1", name="keep_days_positive"),
)

# Rollups (`storage.rollups`): exact counts kept beside the raw events, by UTC
# hour and name, by UTC day and user (events with a user only), and distinct
# users by UTC day, week and month. A mark in
# `rollup_dirty` says the hour's raw rows changed since it was rolled up; reads
# take marked hours (and the whole days around them) from `events` instead.
rollup_hourly = Table(
    "rollup_hourly",
    metadata,
    Column("product", Text, nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("name", Text, nullable=False),
    Column("events", BigInteger, nullable=False),
    PrimaryKeyConstraint("product", "hour", "name"),
)

rollup_user_daily = Table(
    "rollup_user_daily",
    metadata,
    Column("product", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("events", BigInteger, nullable=False),
    PrimaryKeyConstraint("product", "day", "user_id"),
)

# Distinct users per period (the UTC day, the ISO week from its Monday, the
# month from its 1st), from `rollup_user_daily`; exact for a period none of
# whose hours is marked, and recomputed when its last mark is rolled up.
rollup_users = Table(
    "rollup_users",
    metadata,
    Column("product", Text, nullable=False),
    Column("period", Text, nullable=False),
    Column("start", Date, nullable=False),
    Column("users", BigInteger, nullable=False),
    PrimaryKeyConstraint("product", "period", "start"),
    CheckConstraint("period IN ('day', 'week', 'month')", name="period"),
)

rollup_dirty = Table(
    "rollup_dirty",
    metadata,
    Column("product", Text, nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("marked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("product", "hour"),
    Index(None, "marked_at"),
)
