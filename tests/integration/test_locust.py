"""stress/locustfile.py, run for a few seconds against a real `labs-analytics serve`.

Checks the load test itself (it runs, it judges, it writes its statistics) and
the pipeline under it: every request answered 202, and once the stream is
drained each acknowledged event is one row.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.helpers import (
    count_events,
    create_key,
    duplicated_ids,
    in_a_thread,
    serve_process,
    wait_for_drained_stream,
)

LOCUST = Path(sys.executable).with_name("locust")
LOCUSTFILE = Path(__file__).resolve().parents[2] / "stress" / "locustfile.py"
BATCH_SIZES = (25, 100)  # the locustfile's batch sizes: bounds on the rows to expect


async def run_locust(base_url: str, key: str, csv_prefix: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        LABS_API_KEY=key,
        # This test checks the pipeline, not the speed of a machine that is also
        # running PostgreSQL, Redis, the server and whatever else: a p95 gate that
        # only a hang fails (the gate itself still runs, and still judges).
        LABS_P95_MS="30000",
    )
    command = [
        str(LOCUST),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        "5",
        "-r",
        "5",
        "-t",
        "5s",
        # Users finish the request they are sending when the time is up, so the
        # stats count every request the server may have answered (terminated
        # immediately, a batch could land uncounted and break the bounds below).
        "--stop-timeout",
        "30",
        "--host",
        base_url,
        "--csv",
        str(csv_prefix),
        "--only-summary",
    ]
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )


def read_stats(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def count(stats: dict[str, dict[str, str]], name: str, column: str = "Request Count") -> int:
    row = stats.get(name)
    return int(row[column]) if row else 0


async def test_short_load_test_passes_and_every_acknowledged_event_lands_once(
    settings: Settings, db: asyncpg.Connection, redis: Redis, tmp_path: Path
) -> None:
    if not LOCUST.exists():
        pytest.fail(
            f"locust is not installed next to {sys.executable}: `make install` installs "
            "the stress extra (or: pip install -e '.[stress]')"
        )
    del redis  # requested for its clean-up: the test's stream and keys
    key = await create_key(settings, product="loadtest")

    async with in_a_thread(serve_process(settings, tmp_path)) as server:
        result = await run_locust(server.base_url, key, tmp_path / "locust")
        assert result.returncode == 0, (
            f"locust exited {result.returncode}\n{result.stderr[-4000:]}\n"
            f"server log:\n{server.logs()[-4000:]}"
        )
        stats = read_stats(tmp_path / "locust_stats.csv")
        requests = count(stats, "Aggregated")
        assert requests > 0
        assert count(stats, "Aggregated", "Failure Count") == 0, result.stderr[-4000:]

        # Acknowledged events leave the stream only once their rows are committed.
        await wait_for_drained_stream(settings)
        rows = await count_events(db, "loadtest")
        await asyncio.sleep(0.5)  # ten flush intervals: nothing more may arrive
        assert await count_events(db, "loadtest") == rows

    singles = count(stats, "/v1/events [single]")
    batches = count(stats, "/v1/events [batch]")
    assert singles + batches == requests
    low, high = BATCH_SIZES
    assert singles + low * batches <= rows <= singles + high * batches
    assert await duplicated_ids(db) == []
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
