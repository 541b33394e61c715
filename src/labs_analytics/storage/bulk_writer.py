"""Writing a batch of events in one transaction: COPY → staging → idempotent INSERT.

The rows reach the staging table as COPY text (``copy_text``: the flusher's
common path) or as records in a binary COPY (the exact path, and callers
that hold records).

The batch's ``ingest_batches`` row (the transaction log) commits with its
rows, so the log never claims rows that are not there, nor misses rows that are.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson

from labs_analytics.events import EventRecord
from labs_analytics.storage.connection_loss import cancelled_on_connection_loss
from labs_analytics.storage.copy_text import CopyText
from labs_analytics.storage.rollups import mark_dirty_sql

STAGING_TABLE = "events_staging"
STAGING_COLUMNS = (
    "timestamp",
    "event_id",
    "product",
    "name",
    "user_id",
    "properties",
    "context",
    "received_at",
    "corrected_timestamp",
    "clock_skew_ms",
)

# Columns spelled out rather than LIKE events: a pool connection may be opened
# before the migrations ran. ON COMMIT DELETE ROWS empties it after every batch.
CREATE_STAGING_SQL = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    "timestamp" timestamptz NOT NULL,
    event_id uuid NOT NULL,
    product text NOT NULL,
    name text NOT NULL,
    user_id text,
    properties jsonb NOT NULL,
    context jsonb,
    received_at timestamptz NOT NULL,
    corrected_timestamp timestamptz,
    clock_skew_ms bigint
) ON COMMIT DELETE ROWS
"""

# An event is stored once per product and event id. `events` is partitioned by
# day of `timestamp`, so its primary key must hold the timestamp and cannot
# say that alone: the batch first claims its ids in `event_ids` (event_id,
# product → the timestamp and receive time of the copy stored). Within the
# batch, the earliest received copy of an id claims it. The claims are made in
# key order, so two flushers claiming overlapping ids wait on each other
# without deadlock. The product is part of the identity: another product's
# event with the same id is a row of its own, never a duplicate of this one.
CLAIM_IDS_SQL = f"""
INSERT INTO event_ids (product, event_id, "timestamp", received_at)
SELECT DISTINCT ON (event_id, product) product, event_id, "timestamp", received_at
FROM {STAGING_TABLE}
ORDER BY event_id, product, received_at, "timestamp"
ON CONFLICT (event_id, product) DO NOTHING
"""

_INSERT_EVENTS = """
INSERT INTO events ("timestamp", event_id, product, name, user_id, properties, context,
                    received_at, corrected_timestamp, clock_skew_ms, batch_id)
SELECT s."timestamp", s.event_id, s.product, s.name, s.user_id, s.properties, s.context,
       s.received_at, s.corrected_timestamp, s.clock_skew_ms, $1
"""
# Every row claimed its id (the common case): all of them are new. ON CONFLICT
# still folds rows stored before `event_ids` existed, or past its window.
INSERT_ALL_SQL = f"""{_INSERT_EVENTS}FROM {STAGING_TABLE} AS s
ON CONFLICT ("timestamp", product, event_id) DO NOTHING
"""
# Some ids were claimed before (a resend, whatever its timestamp; a redelivered
# batch) or twice in the batch: only the copy that holds an id's claim is
# inserted. A redelivered copy holds its own claim, so it matches, and the
# primary key folds it.
INSERT_CLAIMED_SQL = f"""{_INSERT_EVENTS}FROM {STAGING_TABLE} AS s
JOIN event_ids AS claim ON claim.event_id = s.event_id AND claim.product = s.product
    AND claim."timestamp" = s."timestamp" AND claim.received_at = s.received_at
ON CONFLICT ("timestamp", product, event_id) DO NOTHING
"""

# Every hour the batch wrote into is marked for the rollups, in the same
# transaction (see storage.rollups for why that keeps reads exact).
MARK_DIRTY_SQL = mark_dirty_sql(STAGING_TABLE)

INSERT_BATCH_LOG_SQL = """
INSERT INTO ingest_batches (batch_id, status, consumer, stream_ids, attempt, events, inserted,
                            duplicates, dead_lettered, error, started_at, finished_at,
                            copy_ms, insert_ms, total_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
"""

INSERT_DEAD_LETTER_SQL = """
INSERT INTO dead_letters (stream_id, product, error, payload, kind, event_id, deliveries,
                          dedup_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (dedup_key) DO NOTHING
"""

# SQLSTATE classes that say "this data can never be written": retrying the same
# rows is pointless, so the batch is split and the rows at fault dead-lettered.
# Everything else (connection loss, shutdown, lock timeouts, a missing
# migration) is treated as passing and retried with backoff.
DATA_ERROR_CLASSES = frozenset({"22", "23", "54"})


def is_data_error(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, asyncpg.PostgresError)
        and isinstance(sqlstate, str)
        and sqlstate[:2] in DATA_ERROR_CLASSES
    )


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Once per pooled connection, not per batch: creating a temp table each
    time would bloat the catalog."""
    await conn.execute(CREATE_STAGING_SQL)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stream_id: str
    product: str | None
    error: str
    payload: str
    kind: str = "entry"  # a whole stream entry, or one "event" of it
    event_id: uuid.UUID | None = None
    deliveries: int | None = None

    @property
    def dedup_key(self) -> str:
        return f"{self.stream_id}:{self.event_id or 'entry'}"

    def as_row(self) -> tuple[object, ...]:
        return (
            self.stream_id,
            self.product,
            self.error[:4000],
            self.payload,
            self.kind,
            self.event_id,
            self.deliveries,
            self.dedup_key,
        )


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    batch_id: uuid.UUID
    events: int
    inserted: int
    duplicates: int
    dead_lettered: int
    copy_ms: int
    insert_ms: int
    total_ms: int

    def merge(self, other: BatchOutcome) -> BatchOutcome:
        """Two parts of a split batch, reported as one (under the first part's id)."""
        return BatchOutcome(
            batch_id=self.batch_id,
            events=self.events + other.events,
            inserted=self.inserted + other.inserted,
            duplicates=self.duplicates + other.duplicates,
            dead_lettered=self.dead_lettered + other.dead_lettered,
            copy_ms=self.copy_ms + other.copy_ms,
            insert_ms=self.insert_ms + other.insert_ms,
            total_ms=self.total_ms + other.total_ms,
        )


def _to_copy_row(record: EventRecord) -> tuple[object, ...]:
    return (
        record.timestamp,
        record.event_id,
        record.product,
        record.name,
        record.user,
        orjson.dumps(record.properties).decode(),
        orjson.dumps(record.context).decode() if record.context is not None else None,
        record.received_at,
        record.corrected_timestamp,
        record.clock_skew_ms,
    )


async def stage_rows(conn: asyncpg.Connection, rows: Sequence[EventRecord] | CopyText) -> None:
    """COPY the events into the connection's staging table, as text or as records."""
    if not rows:
        return
    if isinstance(rows, CopyText):
        # A memoryview: asyncpg would take bytes for a file's path.
        await conn.copy_to_table(
            STAGING_TABLE, source=memoryview(rows.data), columns=STAGING_COLUMNS, format="text"
        )
    else:
        await conn.copy_records_to_table(
            STAGING_TABLE, records=map(_to_copy_row, rows), columns=STAGING_COLUMNS
        )


def _row_count(status: str) -> int:
    """The count an INSERT's status carries (``INSERT 0 <n>``)."""
    return int(status.rsplit(" ", 1)[-1])


def _elapsed_ms(since: float) -> int:
    return round((time.perf_counter() - since) * 1000)


class BulkWriter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def write_batch(
        self,
        *,
        batch_id: uuid.UUID,
        consumer: str,
        stream_ids: Sequence[str],
        attempt: int,
        rows: Sequence[EventRecord] | CopyText,
        dead_letters: Sequence[DeadLetter] = (),
    ) -> BatchOutcome:
        """``rows``: the events as records, or as the COPY text of stream entries."""
        started_at = datetime.now(UTC)
        events = len(rows)
        started = time.perf_counter()
        async with (
            self._pool.acquire() as conn,
            cancelled_on_connection_loss(conn),
            conn.transaction(),
        ):
            copy_started = time.perf_counter()
            await stage_rows(conn, rows)
            copy_ms = _elapsed_ms(copy_started)

            insert_started = time.perf_counter()
            claimed = _row_count(await conn.execute(CLAIM_IDS_SQL))
            # Skipping the join when every row claimed its id saves a third of
            # the claim's cost (A/B, 5,000-row batches).
            insert = INSERT_ALL_SQL if claimed == events else INSERT_CLAIMED_SQL
            inserted = _row_count(await conn.execute(insert, batch_id))
            insert_ms = _elapsed_ms(insert_started)

            if dead_letters:
                await conn.executemany(INSERT_DEAD_LETTER_SQL, [d.as_row() for d in dead_letters])
            if inserted:
                # Last but one: the marks stay row-locked until the commit (a
                # rollup refresh skips them meanwhile), so keep that short.
                await conn.execute(MARK_DIRTY_SQL)
            total_ms = _elapsed_ms(started)
            await conn.execute(
                INSERT_BATCH_LOG_SQL,
                batch_id,
                "committed",
                consumer,
                list(stream_ids),
                attempt,
                events,
                inserted,
                events - inserted,
                len(dead_letters),
                None,
                started_at,
                datetime.now(UTC),
                copy_ms,
                insert_ms,
                total_ms,
            )
        return BatchOutcome(
            batch_id=batch_id,
            events=events,
            inserted=inserted,
            duplicates=events - inserted,
            dead_lettered=len(dead_letters),
            copy_ms=copy_ms,
            insert_ms=insert_ms,
            total_ms=total_ms,
        )

    async def write_dead_letters(self, dead_letters: Sequence[DeadLetter]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(INSERT_DEAD_LETTER_SQL, [d.as_row() for d in dead_letters])

    async def record_failure(
        self,
        *,
        batch_id: uuid.UUID,
        consumer: str,
        stream_ids: Sequence[str],
        attempt: int,
        events: int,
        error: str,
        started_at: datetime,
        status: str = "failed",
        wait_seconds: float = 2.0,
    ) -> None:
        """Log a failed attempt in ``ingest_batches`` when PostgreSQL is reachable.

        Best effort, outside the failed transaction: when the server is down
        this fails too, and the JSON log line is the record.
        """
        finished_at = datetime.now(UTC)
        total_ms = round((finished_at - started_at).total_seconds() * 1000)
        async with self._pool.acquire(timeout=wait_seconds) as conn:
            await conn.execute(
                INSERT_BATCH_LOG_SQL,
                batch_id,
                status,
                consumer,
                list(stream_ids),
                attempt,
                events,
                0,
                0,
                0,
                error[:2000],
                started_at,
                finished_at,
                None,
                None,
                total_ms,
                timeout=wait_seconds,
            )
