"""`labs-analytics export` and `summary`: the read API's records from the command line."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import subprocess
from pathlib import Path

import asyncpg

from labs_analytics.settings import Settings
from tests.helpers import cli, cli_env
from tests.integration.test_query import generate_rows, store


async def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        cli(*args),
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_export_writes_every_matching_event_and_counts_them(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await db.execute(
        "INSERT INTO events (timestamp, event_id, product, name, user_id, properties, "
        "received_at) SELECT timestamp '2026-11-01' + make_interval(secs => i), "
        "gen_random_uuid(), 'clubs', 'page.view', 'u' || (i % 7), "
        "jsonb_build_object('i', i), now() FROM generate_series(1, 12000) AS i"
    )
    await store(db, generate_rows())  # other products and names: left out by the filters
    wanted = await db.fetchval(
        "SELECT count(*) FROM events WHERE product = 'clubs' AND name = 'page.view' "
        "AND timestamp >= '2026-10-01' AND timestamp < '2026-12-01'"
    )
    out = tmp_path / "clubs.csv.gz"
    done = await run(
        settings,
        "export",
        "--product", "clubs",
        "--name", "page.view",
        "--from", "2026-10-01",
        "--to", "2026-11-30",
        "--out", str(out),
        "--gzip",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {wanted:,} events to {out}" in done.stderr
    with gzip.open(out, "rt", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == wanted
    assert len({row["event_id"] for row in rows}) == wanted
    assert {row["name"] for row in rows} == {"page.view"}


async def test_export_as_ndjson_and_a_bad_parameter(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    del db  # requested for its clean-up: no events
    out = tmp_path / "empty.ndjson"
    done = await run(
        settings, "export", "--product", "clubs", "--format", "ndjson", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == ""
    bad = await run(settings, "export", "--product", "clubs", "--format", "xml", "--out", str(out))
    assert bad.returncode == 2
    assert "invalid format" in bad.stderr


async def test_summary_prints_the_api_answer(settings: Settings, db: asyncpg.Connection) -> None:
    await store(db, generate_rows())
    expected = await db.fetchval(
        "SELECT count(*) FROM events WHERE product = 'clubs' AND user_id = 'u2' "
        "AND timestamp >= '2026-01-01' AND timestamp < '2027-01-01'"
    )
    done = await run(
        settings, "summary", "u2", "--product", "clubs", "--from", "2026-01-01",
        "--to", "2026-12-31", "--top", "prop:route",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["user"] == "u2"
    assert answer["total_events"] == expected
    assert sum(item["events"] for item in answer["events_by_name"]) == expected
