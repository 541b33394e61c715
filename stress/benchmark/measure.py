"""One function per measurement, each against servers already running, each returning its result.

ingest_rounds   (a) the framework floor and (b) single-event ingest, alternating
batch_ingest    (c) 100 events per request
drain           the flushers alone, emptying what (c) queued
end_to_end      (d) events landed at a paced rate, and freshness (202 → row visible)
rollup_backlog  for (h), (d) again with a refresh working: a marked past day
copy_ceiling    (e) raw asyncpg COPY into `events`
soak            the API's RSS over a run at a steady rate
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from labs_analytics.storage.bulk_writer import STAGING_COLUMNS
from labs_analytics.storage.partitions import ensure_partitions

from . import compat
from .load import load, paced
from .report import load_line
from .results import Compat, CopyCeiling, Drain, EndToEnd, IngestRounds, LoadResult, Soak
from .stack import backlog_of, sampling_rss

SINGLE_EVENT = {"name": "page.view", "user": "u_1842", "properties": {"path": "/clubs/42"}}
BATCH_EVENT = {
    "name": "api.call",
    "user": "u_1842",
    "properties": {"route": "/api/clubs/{id}", "status": 200, "latency_ms": 38},
}
BATCH_SIZE = 100
SINGLE_BODY = json.dumps(SINGLE_EVENT).encode()
BATCH_BODY = json.dumps({"events": [BATCH_EVENT] * BATCH_SIZE}).encode()

# (d) starts below the capacity (c) and the drain rate imply together, then
# follows the backlog (BacklogPacer).
E2E_START_SHARE_OF_CAPACITY = 0.8


async def ingest_rounds(
    floor_url: str, url: str, key: str, rounds: int, seconds: int, work: Path
) -> IngestRounds:
    """(a) and (b), interleaved: a round is ``seconds`` of the floor, then of single-event ingest.

    Both servers run throughout (the idle one costs nothing), so a machine
    that speeds up or slows down during the run (other tenants, frequency
    scaling) moves both alike; the ratio is the median of the rounds' ratios.
    """
    for warm_up in (floor_url, url):
        await asyncio.to_thread(load, warm_up, key, SINGLE_BODY, 2, work)
    floor_runs: list[LoadResult] = []
    single_runs: list[LoadResult] = []
    for round_number in range(1, rounds + 1):
        floor_runs.append(await asyncio.to_thread(load, floor_url, key, SINGLE_BODY, seconds, work))
        single_runs.append(await asyncio.to_thread(load, url, key, SINGLE_BODY, seconds, work))
        print(load_line(f"(a) floor, round {round_number}", floor_runs[-1]), flush=True)
        print(load_line(f"(b) single, round {round_number}", single_runs[-1]), flush=True)
    return IngestRounds(
        floor=median_run(floor_runs),
        single=median_run(single_runs),
        ratios=tuple(
            s.requests_per_second / f.requests_per_second
            for f, s in zip(floor_runs, single_runs, strict=True)
        ),
        single_p99_worst_ms=max(run.p99_ms for run in single_runs),
        single_errors=sum(run.errors for run in single_runs),
        p99_gaps_ms=tuple(
            s.p99_ms - f.p99_ms for f, s in zip(floor_runs, single_runs, strict=True)
        ),
    )


async def batch_ingest(url: str, key: str, seconds: int, work: Path) -> LoadResult:
    """(c) ``BATCH_SIZE`` events per request, flat out."""
    result = await asyncio.to_thread(load, url, key, BATCH_BODY, seconds, work)
    print(load_line("(c) batch x100", result), flush=True)
    return result


async def compat_ingest(base_url: str, key: str, token: str, seconds: int, work: Path) -> Compat:
    """(f) the legacy route with a cached JWT, (g) Segment batches, flat out."""
    legacy = await asyncio.to_thread(
        load, f"{base_url}/analytics/", token, compat.LEGACY_BODY, seconds, work
    )
    print(load_line("(f) legacy, 10 data points", legacy), flush=True)
    segment = await asyncio.to_thread(
        load, f"{base_url}/v1/batch", key, compat.SEGMENT_BODY, seconds, work
    )
    print(load_line("(g) Segment batch x100", segment), flush=True)
    return Compat(legacy=legacy, segment=segment)


async def drain(base_url: str, dsn: str) -> Drain:
    """Rows/s the flushers land while emptying the backlog, with no load coming in."""
    start, rows_before = time.monotonic(), await count_rows(dsn)
    while True:
        await asyncio.sleep(2)
        if await asyncio.to_thread(backlog_of, base_url) == 0:
            break
    drained = await count_rows(dsn) - rows_before
    return Drain(rows_per_second=drained / (time.monotonic() - start))


def pipeline_capacity(drain: Drain, batch: LoadResult) -> float:
    """Events/s of ingest and flushers together: they share the cores, so each
    event costs the CPU of both stages."""
    return 1 / (1 / drain.rows_per_second + 1 / (BATCH_SIZE * batch.requests_per_second))


async def end_to_end(
    base_url: str, key: str, dsn: str, start_events_per_second: float, seconds: int, work: Path
) -> EndToEnd:
    """(d) batches at a paced rate for ``seconds``, with a freshness probe beside them."""
    rate_requests = max(1.0, start_events_per_second / BATCH_SIZE)
    pace = BacklogPacer(base_url)
    # The landed rate is taken over the steady part: after a warm-up, until the load ends.
    warmup = min(10.0, seconds / 4)
    url = f"{base_url}/v1/events"
    offered, probe, landed = await asyncio.gather(
        asyncio.to_thread(paced, url, key, BATCH_BODY, rate_requests, seconds, work, pace),
        freshness_probe(base_url, key, dsn, seconds),
        landed_rate(dsn, warmup, seconds),
    )
    return EndToEnd(
        seconds=seconds,
        paced_from_events_per_second=start_events_per_second,
        offered_events_per_second=BATCH_SIZE * offered.requests_per_second,
        landed_events_per_second=landed,
        errors=offered.errors,
        freshness_p50_s=percentile(probe, 0.5),
        freshness_p99_s=percentile(probe, 0.99),
        probes=len(probe),
    )


async def rollup_backlog(dsn: str, events: int) -> dt.datetime:
    """``events`` events of a day three days back stored (as flushed long ago:
    no flush will write into that day) and its 24 hours marked two minutes ago:
    settled (the flushers' next refresh takes them), not overdue (a refresh
    still waits while the flushers are behind). The day's start."""
    day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day -= dt.timedelta(days=3)
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_partitions(conn, today=day.date(), days_ahead=0)
        # Shaped like (d)'s and the read benchmark's: 20 names, 20,000 users,
        # the keys ROLLUP_PROPERTIES rolls up by default among the properties.
        await conn.execute(
            """
            INSERT INTO events ("timestamp", event_id, product, name, user_id, properties,
                                received_at)
            SELECT $1::timestamptz + (i % 86400) * interval '1 second', gen_random_uuid(),
                   'bench', 'name.' || (i % 20), 'u_' || (i * 7919 % 20000),
                   jsonb_build_object('route', '/api/clubs/{id}/' || (i % 30),
                                      'status_code', (ARRAY[200, 200, 200, 404, 500])[1 + i % 5],
                                      'duration_ms', i % 200),
                   $1::timestamptz + (i % 86400) * interval '1 second'
            FROM generate_series(1, $2::bigint) AS i
            """,
            day,
            events,
        )
        await conn.execute(
            """
            INSERT INTO rollup_dirty (product, hour, marked_at)
            SELECT 'bench', hour, now() - interval '2 minutes'
            FROM generate_series($1::timestamptz, $1::timestamptz + interval '23 hours',
                                 interval '1 hour') AS hour
            ON CONFLICT (product, hour) DO UPDATE SET marked_at = excluded.marked_at
            """,
            day,
        )
        await conn.execute("ANALYZE events")
    finally:
        await conn.close()
    return day


async def marks_left(dsn: str, day: dt.datetime) -> int:
    """The hours of ``day`` still marked."""
    conn = await asyncpg.connect(dsn)
    try:
        return await _marks_of(conn, day)
    finally:
        await conn.close()


async def caught_up(dsn: str, day: dt.datetime, within_seconds: float) -> float | None:
    """Seconds until no hour of ``day`` is marked (the refresh caught up); None
    if it had not within ``within_seconds``."""
    start = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        while time.monotonic() - start < within_seconds:
            if await _marks_of(conn, day) == 0:
                return time.monotonic() - start
            await asyncio.sleep(1)
    finally:
        await conn.close()
    return None


async def _marks_of(conn: asyncpg.Connection, day: dt.datetime) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM rollup_dirty WHERE product = 'bench' "
            "AND hour >= $1 AND hour < $1 + interval '1 day'",
            day,
        )
    )


class BacklogPacer:
    """Between paced segments: slower if the backlog holds more than 1.2 s of
    events (the flushers are falling behind), a little faster while it holds
    less than 0.6 s (a flusher waits up to FLUSH_INTERVAL_MS, 0.5 s, to fill
    a batch, so that much is always queued). (d) reports what was sustained."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def __call__(self, rate: float) -> float:
        backlog_seconds = backlog_of(self.base_url) / (BATCH_SIZE * rate)
        if backlog_seconds > 1.2:
            return rate * 0.85
        if backlog_seconds < 0.6:
            return rate * 1.05
        return rate


async def copy_ceiling(dsn: str, seconds: float) -> CopyCeiling:
    """(e) raw COPY of event-shaped rows straight into `events`, batches of 5000."""
    conn = await asyncpg.connect(dsn)
    props = json.dumps(BATCH_EVENT["properties"])
    columns = STAGING_COLUMNS  # the flusher's row shape, straight into `events`
    rows = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            now = dt.datetime.now(dt.UTC)
            batch = [
                (now, uuid.uuid4(), "bench", "api.call", "u_1842", props, None, now, None, None)
                for _ in range(5000)
            ]
            await conn.copy_records_to_table("events", records=batch, columns=columns)
            rows += len(batch)
    finally:
        await conn.close()
    return CopyCeiling(rows_per_second=rows / (time.monotonic() - start))


async def soak(
    base_url: str, key: str, pid: int, events_per_second: float, seconds: int, work: Path
) -> Soak:
    """Batches at a steady rate for ``seconds``, the RSS of process ``pid`` (and its
    children) sampled every 2 s: past the warm-up, the second tenth of the run
    against the last."""
    rate_requests = events_per_second / BATCH_SIZE
    url = f"{base_url}/v1/events"
    async with sampling_rss(pid, interval=2) as sampler:
        await asyncio.to_thread(paced, url, key, BATCH_BODY, rate_requests, seconds, work)
    series = sampler.series
    tenth = max(1, len(series) // 10)
    return Soak(
        seconds=seconds,
        early_bytes=statistics.mean(series[tenth : 2 * tenth] or series[:tenth]),
        late_bytes=statistics.mean(series[-tenth:]),
    )


# --- helpers of the measurements above ------------------------------------------------


def median_run(runs: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (the lower middle one for an even count)."""
    return sorted(runs, key=lambda run: run.requests_per_second)[(len(runs) - 1) // 2]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        # An estimate would do for a rate, but the exact count is cheap enough here.
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def landed_rate(dsn: str, start_after: float, end_after: float) -> float:
    """Rows/s landed between two moments of the run."""
    began = time.monotonic()
    await asyncio.sleep(start_after)
    first, first_at = await count_rows(dsn), time.monotonic()
    await asyncio.sleep(max(0.0, end_after - (time.monotonic() - began)))
    return (await count_rows(dsn) - first) / (time.monotonic() - first_at)


async def freshness_probe(base_url: str, key: str, dsn: str, seconds: float) -> list[float]:
    """Post one marked event every 100 ms; time from its 202 to its row being visible."""
    acked: dict[tuple[dt.datetime, uuid.UUID], float] = {}
    seen: list[float] = []
    conn = await asyncpg.connect(dsn)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:

        async def poster() -> None:
            while time.monotonic() < deadline:
                event_id = uuid.uuid4()
                moment = dt.datetime.now(dt.UTC)
                body = {
                    "event_id": str(event_id),
                    "name": "bench.probe",
                    "timestamp": moment.isoformat(),
                }
                response = await client.post(f"{base_url}/v1/events", json=body)
                if response.status_code == 202:
                    acked[(moment, event_id)] = time.monotonic()
                await asyncio.sleep(0.1)

        async def poller() -> None:
            while time.monotonic() < deadline + 10 and (time.monotonic() < deadline or acked):
                if acked:
                    keys = list(acked)
                    rows = await conn.fetch(
                        'SELECT "timestamp", event_id FROM events WHERE ("timestamp", event_id)'
                        " IN (SELECT * FROM unnest($1::timestamptz[], $2::uuid[]))",
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                    )
                    now = time.monotonic()
                    for row in rows:
                        sent = acked.pop((row["timestamp"], row["event_id"]), None)
                        if sent is not None:
                            seen.append(now - sent)
                await asyncio.sleep(0.02)

        await asyncio.gather(poster(), poller())
    await conn.close()
    return seen
