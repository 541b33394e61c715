"""``GET /v1/pipeline``: the whole pipeline's state, for operators (``admin`` keys).

One answer for an outage: Redis and PostgreSQL up or down, the stream's
backlog and its oldest entry's age, the spool, dead letters, and what the
flushers did in the last five minutes (the transaction log). Each part is read
on its own with a short deadline, so a server that is down makes its part
``null`` instead of failing the answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from sqlalchemy import text

from labs_analytics.api.dependencies import State
from labs_analytics.api.errors import ErrorBody
from labs_analytics.api.health import check_postgres
from labs_analytics.api.read import AdminKey
from labs_analytics.api.state import AppState
from labs_analytics.logs import get_logger

log = get_logger(__name__)
router = APIRouter(tags=["operations"])

STATE_TIMEOUT_SECONDS = 1.0
RECENT = dt.timedelta(minutes=5)
RECENT_FAILURES = 10
REPLAY_COMMAND = "labs-analytics deadletters list, then labs-analytics deadletters replay"


@dataclass(frozen=True, slots=True)
class StreamState:
    backlog: int | None  # None: the counter is not an integer
    pending: int
    oldest_entry_age_seconds: float
    dead_letter_entries: int


async def read_stream_state(state: AppState) -> StreamState | None:
    """The stream as Redis sees it now; None when Redis does not answer in time."""
    settings = state.settings
    try:
        async with asyncio.timeout(STATE_TIMEOUT_SECONDS):
            backlog = await state.queue.backlog.read()
            oldest: Any = await state.redis.xrange(settings.stream_key, count=1)
            try:
                pending: Any = await state.redis.xpending(
                    settings.stream_key, settings.consumer_group
                )
            except RedisError:  # no group yet
                pending = {"pending": 0}
            dead: Any = await state.redis.xlen(settings.dead_letter_stream_key)
    except (RedisError, OSError, TimeoutError):
        return None
    return StreamState(
        backlog=backlog,
        pending=int(pending["pending"]),
        oldest_entry_age_seconds=_age_seconds(oldest[0][0]) if oldest else 0.0,
        dead_letter_entries=int(dead),
    )


def _age_seconds(entry_id: bytes | str) -> float:
    text_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    created_ms = int(text_id.split("-", 1)[0])
    return max(0.0, time.time() - created_ms / 1000)


_FLUSH_SQL = text(
    """
    SELECT count(*) FILTER (WHERE status = 'committed') AS batches,
           coalesce(sum(inserted) FILTER (WHERE status = 'committed'), 0) AS inserted,
           coalesce(sum(duplicates) FILTER (WHERE status = 'committed'), 0) AS duplicates,
           count(*) FILTER (WHERE status <> 'committed') AS failed,
           max(finished_at) FILTER (WHERE status = 'committed') AS last_commit_at,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY total_ms)
               FILTER (WHERE status = 'committed') AS median_batch_ms
    FROM ingest_batches
    WHERE finished_at >= :since
    """
)
_FAILURES_SQL = text(
    """
    SELECT batch_id, status, consumer, attempt, events, error, finished_at
    FROM ingest_batches
    WHERE status <> 'committed'
    ORDER BY finished_at DESC
    LIMIT :limit
    """
)
_DEAD_LETTERS_SQL = text("SELECT count(*) FROM dead_letters")


async def _postgres_part(state: AppState) -> dict[str, Any] | None:
    """Flushes of the last five minutes, recent failures, stored dead letters."""
    since = dt.datetime.now(dt.UTC) - RECENT
    try:
        async with asyncio.timeout(STATE_TIMEOUT_SECONDS * 2), state.engine.connect() as conn:
            flush = (await conn.execute(_FLUSH_SQL, {"since": since})).mappings().one()
            failures = (
                (await conn.execute(_FAILURES_SQL, {"limit": RECENT_FAILURES})).mappings().all()
            )
            stored_dead = int((await conn.execute(_DEAD_LETTERS_SQL)).scalar_one())
    except Exception as exc:  # down, or not migrated: the part is unknown, not an error
        log.warning("pipeline.postgres_part_unavailable", error=f"{type(exc).__name__}: {exc}")
        return None
    seconds = RECENT.total_seconds()
    last = flush["last_commit_at"]
    return {
        "flush": {
            "window_seconds": int(seconds),
            "batches": int(flush["batches"]),
            "events_inserted": int(flush["inserted"]),
            "duplicates": int(flush["duplicates"]),
            "events_per_second": round(int(flush["inserted"]) / seconds, 2),
            "failed_batches": int(flush["failed"]),
            "median_batch_ms": flush["median_batch_ms"],
            "last_commit_at": last.isoformat() if last else None,
        },
        "recent_failures": [
            {
                "batch_id": str(row["batch_id"]),
                "status": row["status"],
                "consumer": row["consumer"],
                "attempt": row["attempt"],
                "events": row["events"],
                "error": row["error"],
                "finished_at": row["finished_at"].isoformat(),
            }
            for row in failures
        ],
        "stored_dead_letters": stored_dead,
    }


class StreamPart(BaseModel):
    backlog_events: int | None = Field(description="Events in the stream (null: unreadable).")
    max_backlog_events: int = Field(description="Above this, ingest answers 503 (0: no limit).")
    pending_entries: int = Field(description="Entries delivered to a flusher, not yet acked.")
    oldest_entry_age_seconds: float = Field(description="0 when the stream is empty.")


class SpoolPart(BaseModel):
    enabled: bool
    writable: bool
    bytes: int = Field(description="Events kept on this process's disk while Redis was away.")
    max_bytes: int


class DeadLettersPart(BaseModel):
    in_redis: int | None = Field(description="Entries in the dead-letter stream.")
    stored: int | None = Field(description="Rows of `dead_letters` in PostgreSQL.")
    replay: str = Field(description="The commands that list and replay them.")


class FlushPart(BaseModel):
    window_seconds: int
    batches: int = Field(description="Batches committed in the window.")
    events_inserted: int
    duplicates: int
    events_per_second: float
    failed_batches: int
    median_batch_ms: int | None
    last_commit_at: dt.datetime | None


class FailedBatch(BaseModel):
    batch_id: str
    status: str
    consumer: str
    attempt: int
    events: int
    error: str | None
    finished_at: dt.datetime


class PipelineState(BaseModel):
    as_of: dt.datetime
    redis: Literal["up", "down"]
    postgresql: Literal["up", "down"]
    stream: StreamPart | None = Field(description="Null while Redis does not answer.")
    spool: SpoolPart
    dead_letters: DeadLettersPart
    flush: FlushPart | None = Field(
        description="The last five minutes of the transaction log; null while PostgreSQL is down."
    )
    recent_failures: list[FailedBatch] | None = Field(
        description="The last ten batches that did not commit; null while PostgreSQL is down."
    )


@router.get(
    "/v1/pipeline",
    response_model=PipelineState,
    summary="The pipeline's state: servers, backlog, spool, flushes, dead letters",
    description="For `admin` keys. Parts that cannot be read now (their server is down) are "
    "`null`; `redis` and `postgresql` say which.",
    responses={
        401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
        403: {"model": ErrorBody, "description": "The key lacks the `admin` scope."},
    },
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def pipeline(key: AdminKey, state: State) -> dict[str, Any]:
    del key  # admin scope checked; the pipeline is the deployment's, not a product's
    stream, postgres_up, stored = await asyncio.gather(
        read_stream_state(state), check_postgres(state), _postgres_part(state)
    )
    settings = state.settings
    spool = state.queue.spool
    return {
        "as_of": dt.datetime.now(dt.UTC).isoformat(),
        "redis": "up" if stream is not None else "down",
        "postgresql": "up" if postgres_up else "down",
        "stream": None
        if stream is None
        else {
            "backlog_events": stream.backlog,
            "max_backlog_events": settings.backlog_max_events,
            "pending_entries": stream.pending,
            "oldest_entry_age_seconds": round(stream.oldest_entry_age_seconds, 3),
        },
        "spool": {
            "enabled": spool is not None,
            "writable": spool is not None and spool.writable(),
            "bytes": spool.total_bytes() if spool is not None else 0,
            "max_bytes": settings.spool_max_bytes,
        },
        "dead_letters": {
            "in_redis": stream.dead_letter_entries if stream is not None else None,
            "stored": stored["stored_dead_letters"] if stored is not None else None,
            "replay": REPLAY_COMMAND,
        },
        "flush": stored["flush"] if stored is not None else None,
        "recent_failures": stored["recent_failures"] if stored is not None else None,
    }
