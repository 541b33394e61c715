"""`labs-analytics query`: the read API's answers from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg

from labs_analytics.settings import Settings
from tests.helpers import run_cli_async
from tests.integration.test_query import generate_rows, store, stored_rows
from tests.read_reference import reference_query

RANGE = ["2026-10-26", "2026-11-08"]


async def test_query_answers_as_the_api_does(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await store(db, generate_rows())
    body: dict[str, Any] = {
        "metrics": ["events", "users", "p95:duration_ms"],
        "dimensions": ["name"],
        "date_range": RANGE,
        "timezone": "America/New_York",
    }
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    done = await run_cli_async(
        settings, "query", "--product", "mobile", "--file", str(request), "--json"
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    results, total = reference_query(await stored_rows(db), body, "mobile")
    assert answer["meta"]["total_rows"] == total
    assert [(r["dimensions"], r["metrics"][:2]) for r in answer["results"]] == [
        (r["dimensions"], r["metrics"][:2]) for r in results
    ]


async def test_query_flags_and_the_table(settings: Settings, db: asyncpg.Connection) -> None:
    await store(db, generate_rows())
    done = await run_cli_async(
        settings,
        "query",
        "--product", "clubs",
        "--metric", "events",
        "--metric", "users",
        "--dimension", "time:week",
        "--filter", '["is", "name", ["club.view", "club.apply"]]',
        "--range", ",".join(RANGE),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["time:week", "events", "users"]
    assert [line.split()[0] for line in lines[1:-1]] == ["2026-10-26", "2026-11-02"]
    assert lines[-1].startswith("2 of 2 rows, rollup")  # users by name: a day-level rollup


async def test_a_bad_query_says_which_field(settings: Settings) -> None:
    done = await run_cli_async(settings, "query", "--product", "clubs", "--metric", "clicks")
    assert done.returncode == 2
    assert "invalid metrics: " in done.stderr
    assert "Traceback" not in done.stderr
