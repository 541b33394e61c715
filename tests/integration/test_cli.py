"""The `labs-analytics` command, run as a user runs it: a child process."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from labs_analytics.settings import Settings
from tests.helpers import ApiFactory, cli, cli_env, create_key, make_events, wait_for_events


def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), env=cli_env(settings, **env), capture_output=True, text=True, timeout=60
    )


async def test_keys_create_prints_the_key_alone_on_the_last_line(
    settings: Settings, db: asyncpg.Connection
) -> None:
    result = run_cli(
        settings,
        "keys",
        "create",
        "--product",
        "clubs",
        "--scope",
        "ingest",
        "--scope",
        "read",
        "--label",
        "clubs backend",
    )
    assert result.returncode == 0, result.stderr
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith("lak_")
    assert " " not in last_line
    row = await db.fetchrow("SELECT * FROM api_keys")
    assert row is not None
    assert (row["product"], row["scopes"], row["label"]) == (
        "clubs",
        ["ingest", "read"],
        "clubs backend",
    )
    assert last_line.split("_")[1] == row["key_id"]


async def test_keys_list_shows_ids_never_secrets(
    settings: Settings, db: asyncpg.Connection
) -> None:
    created = run_cli(settings, "keys", "create", "--product", "clubs", "--scope", "ingest")
    key = created.stdout.strip().splitlines()[-1]
    listed = run_cli(settings, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key.split("_")[1] in listed.stdout
    assert key.rsplit("_", 1)[1] not in listed.stdout
    assert "active" in listed.stdout


async def test_keys_revoke_then_revoke_again_fails(
    settings: Settings, db: asyncpg.Connection
) -> None:
    created = run_cli(settings, "keys", "create", "--product", "clubs", "--scope", "ingest")
    key_id = created.stdout.strip().splitlines()[-1].split("_")[1]
    first = run_cli(settings, "keys", "revoke", key_id)
    assert first.returncode == 0, first.stderr
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys") is True
    again = run_cli(settings, "keys", "revoke", key_id)
    assert again.returncode == 1
    assert "no active key" in again.stderr


def test_keys_create_refuses_a_bad_product_and_an_unknown_scope(settings: Settings) -> None:
    bad_product = run_cli(settings, "keys", "create", "--product", "Bad Name", "--scope", "ingest")
    assert bad_product.returncode == 2
    bad_scope = run_cli(settings, "keys", "create", "--product", "clubs", "--scope", "root")
    assert bad_scope.returncode == 2


def test_migrate_status_reports_up_to_date(settings: Settings) -> None:
    result = run_cli(settings, "migrate", "status")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_migrate_is_idempotent(settings: Settings) -> None:
    result = run_cli(settings, "migrate")
    assert result.returncode == 0, result.stderr


def test_migrate_sql_prints_the_schema_without_a_database(settings: Settings) -> None:
    result = run_cli(settings, "migrate", "--sql", DATABASE_URL="")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE events" in result.stdout
    assert "PARTITION BY RANGE" in result.stdout


def test_commands_needing_a_database_say_so_when_it_is_not_set(settings: Settings) -> None:
    result = run_cli(settings, "keys", "list", DATABASE_URL="")
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr


async def test_standalone_flusher_writes_and_exits_cleanly_on_sigterm(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection, redis: Redis, tmp_path: Path
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(30)}, key)).status_code == 202

    log_path = tmp_path / "flusher.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            cli("flusher"), env=cli_env(settings), stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        await wait_for_events(db, 30)
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=15)
    logs = log_path.read_text()
    assert returncode == 0, logs
    assert '"event":"flush.committed"' in logs
    assert '"event":"flusher.stopped"' in logs
