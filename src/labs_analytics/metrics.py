"""Prometheus metrics, named ``labs_*``.

With several uvicorn workers, ``labs-analytics serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` and every worker writes its samples there;
``/metrics`` then aggregates them, so one scrape sees the whole process group.
Gauges that describe shared state (backlog, PostgreSQL up) are set by the
worker that answers the scrape, just before rendering.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

EVENTS_ACCEPTED = Counter(
    "labs_events_accepted_total",
    "Events acknowledged with 202, by where they were made durable.",
    ["destination"],  # redis | spool
)
REQUESTS_REJECTED = Counter(
    "labs_ingest_rejected_total",
    "Ingest requests refused, by reason (the error code of the response).",
    ["reason"],
)
CONNECTIONS_REFUSED = Counter(
    "labs_connections_refused_total",
    "Connections cut off by the HTTP protocol's bounds, by reason.",
    ["reason"],  # head_too_large | head_timeout | body_timeout | connection_cap | evicted
)


class BatchedCount:
    """A counter incremented in bulk, for the ingest hot path.

    In multiprocess mode every ``inc`` writes to a memory-mapped file, a
    measurable share of a one-event request; counts are added here and
    written out by ``flush_batched``: from the queue's maintenance loop (twice
    a second), at shutdown, and before every scrape this process answers.
    """

    __slots__ = ("_counter", "_pending")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._pending = 0

    def inc(self, amount: int) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0
            self._counter.inc(pending)


# Children resolved once: `.labels()` on every request is measurable on the hot path.
ACCEPTED_INTO_REDIS = BatchedCount(EVENTS_ACCEPTED.labels("redis"))
_BATCHED = (ACCEPTED_INTO_REDIS,)
ACCEPTED_INTO_SPOOL = EVENTS_ACCEPTED.labels("spool")
EVENTS_SPOOLED = Counter("labs_events_spooled_total", "Events written to the local spool.")
EVENTS_REPLAYED = Counter(
    "labs_events_replayed_total", "Spooled events replayed into the Redis stream."
)
EVENTS_FLUSHED = Counter("labs_events_flushed_total", "Rows inserted into PostgreSQL.")
EVENTS_DUPLICATE = Counter(
    "labs_events_duplicates_total", "Events skipped by the flusher as already stored."
)
EVENTS_DEAD_LETTERED = Counter(
    "labs_events_dead_lettered_total", "Events or entries moved to dead letters."
)
FLUSH_BATCHES = Counter(
    "labs_flush_batches_total", "Flush attempts, by outcome.", ["status"]
)  # committed | failed
FLUSH_SECONDS = Histogram(
    "labs_flush_duration_seconds",
    "Time to write one batch (COPY, INSERT, transaction log, commit).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SPOOL_BYTES = Gauge(
    "labs_spool_bytes", "Bytes in this process's local spool.", multiprocess_mode="livesum"
)
BACKLOG_EVENTS = Gauge(
    "labs_stream_backlog_events",
    "Events in the Redis stream not yet flushed (the backlog counter: never negative, "
    "recounted from the stream every few seconds).",
    multiprocess_mode="mostrecent",
)
BACKLOG_CORRECTIONS = Counter(
    "labs_stream_backlog_corrections_total",
    "Recounts of the stream that found the backlog counter wrong and set it right "
    "(entries written to the stream by something other than this service).",
)
PENDING_ENTRIES = Gauge(
    "labs_stream_pending_entries",
    "Stream entries delivered to a flusher and not yet acknowledged.",
    multiprocess_mode="mostrecent",
)
OLDEST_ENTRY_AGE = Gauge(
    "labs_stream_oldest_entry_age_seconds",
    "Age of the oldest entry still in the stream (0 when empty).",
    multiprocess_mode="mostrecent",
)
POSTGRES_UP = Gauge(
    "labs_postgres_up", "1 if PostgreSQL answered the last check.", multiprocess_mode="mostrecent"
)
REDIS_UP = Gauge(
    "labs_redis_up", "1 if Redis answered the last check.", multiprocess_mode="mostrecent"
)


def flush_batched() -> None:
    for count in _BATCHED:
        count.flush()


def render() -> tuple[bytes, str]:
    flush_batched()
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
