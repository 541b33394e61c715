"""A rate limit is a number the token bucket can use, wherever it comes from.

`keys create --rate-limit inf` (or nan, 1e-300, 1e308, a negative) used to be
stored; the Lua script that checks every key's bucket then failed, and with it
the whole call, for every key whose request shared it. Now such a rate is
refused by the CLI, by the repository and by PostgreSQL, and a row that holds
one anyway (written before the CHECK existed) gets the deployment's default.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from labs_analytics.auth.cache import KeyCache
from labs_analytics.auth.keys import (
    MAX_RATE_LIMIT_PER_SECOND,
    MIN_RATE_LIMIT_PER_SECOND,
    InvalidKeyField,
    generate_key,
)
from labs_analytics.logs import JsonFormatter
from labs_analytics.settings import Settings, to_asyncpg_dsn
from tests.helpers import (
    Servers,
    create_key_with_rate,
    make_events,
    run_cli_async,
    running_api,
    scratch_database,
    wait_for_key_cache_reloads,
)

UNUSABLE_RATES = ["inf", "-inf", "nan", "1e-300", "1e308", "-1", "0", "1000000.5"]


def flat(text: str) -> str:
    """CLI error text without the box drawing, on one line (the box wraps words)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("rate", UNUSABLE_RATES)
async def test_keys_create_refuses_a_rate_the_token_bucket_cannot_use(
    settings: Settings, db: asyncpg.Connection, rate: str
) -> None:
    result = await run_cli_async(
        settings, "keys", "create", "--product", "clubs", "--scope", "ingest", "--rate-limit", rate
    )

    assert result.returncode == 2, result.stdout + result.stderr
    error = flat(result.stderr)
    assert "Invalid value for '--rate-limit'" in error
    assert "finite number from 0.001 to 1,000,000" in error
    assert "Traceback" not in result.stderr
    assert "lak_" not in result.stdout
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


@pytest.mark.parametrize(
    "rate",
    [math.inf, -math.inf, math.nan, 1e-300, 1e308, -1.0, 0.0, MAX_RATE_LIMIT_PER_SECOND + 0.5],
)
async def test_the_repository_refuses_a_rate_the_token_bucket_cannot_use(
    settings: Settings, db: asyncpg.Connection, rate: float
) -> None:
    with pytest.raises(InvalidKeyField, match="rate_limit_per_second: events per second"):
        await create_key_with_rate(settings, rate)
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


@pytest.mark.parametrize(
    "stored", ["Infinity", "-Infinity", "NaN", "0", "-1", "1e-300", "1000000.5"]
)
async def test_postgresql_refuses_an_unusable_rate_written_by_hand(
    settings: Settings, db: asyncpg.Connection, stored: str
) -> None:
    await create_key_with_rate(settings, 100)
    with pytest.raises(asyncpg.CheckViolationError, match="ck_api_keys_rate_limit_per_second"):
        await db.execute(
            "UPDATE api_keys SET rate_limit_per_second = $1::text::double precision", stored
        )
    assert await db.fetchval("SELECT rate_limit_per_second FROM api_keys") == 100


async def test_the_lowest_and_highest_allowed_rates_work_in_the_token_bucket(
    settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    del db, redis  # requested for their clean-up
    async with running_api(settings.model_copy(update={"run_flusher": False})) as app:
        slowest = await create_key_with_rate(settings, MIN_RATE_LIMIT_PER_SECOND)
        fastest = await create_key_with_rate(settings, MAX_RATE_LIMIT_PER_SECOND)
        # The bucket holds one full request (1000 events) whatever the rate.
        assert (await app.post({"events": make_events(1000)}, slowest)).status_code == 202
        limited = await app.post({"events": make_events(1)}, slowest)
        assert limited.status_code == 429
        # One event at 0.001 events/s: 1000 s, and a header a client can parse.
        assert 900 <= int(limited.headers["Retry-After"]) <= 1000
        for _ in range(3):
            assert (await app.post({"events": make_events(1000)}, fastest)).status_code == 202


@pytest.fixture
def database_before_the_check(servers: Servers) -> Iterator[str]:
    """A database at the revision before rates were checked: it can hold any double."""
    with scratch_database(servers, "0002_rate_limits_dead_letters") as url:
        yield url


async def insert_key(database_url: str, *, product: str, rate: str) -> tuple[str, str]:
    """A key row written directly, as an old version (or a hand edit) could; (plaintext, hash)."""
    new_key = generate_key()
    conn = await asyncpg.connect(to_asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO api_keys (key_id, product, scopes, key_hash, rate_limit_per_second) "
            "VALUES ($1, $2, '{ingest}', $3, $4::text::double precision)",
            new_key.key_id,
            product,
            new_key.key_hash,
            rate,
        )
    finally:
        await conn.close()
    return new_key.plaintext, new_key.key_hash


def invalid_rate_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = JsonFormatter()
    return [
        formatter.format(record)
        for record in caplog.records
        if record.getMessage() == "keys.invalid_rate_limit"
    ]


async def test_a_stored_unusable_rate_gets_the_default_and_does_not_disable_rate_limiting(
    settings: Settings,
    redis: Redis,
    database_before_the_check: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = database_before_the_check
    broken, broken_hash = await insert_key(url, product="clubs", rate="Infinity")
    # Rate 1/s with 10-event requests: a bucket of 10 events, empty after one request.
    limited, _ = await insert_key(url, product="penn-mobile", rate="1")
    app_settings = settings.model_copy(
        update={"database_url": url, "run_flusher": False, "max_events_per_request": 10}
    )
    caplog.set_level(logging.ERROR, logger="labs_analytics.auth.cache")

    async with running_api(app_settings) as app:
        for expected in ([202, 202], [202, 429]):
            # Sent together, so they can share one call of the bucket script.
            answers = await asyncio.gather(
                app.post({"events": make_events(10)}, broken),
                app.post({"events": make_events(10)}, limited),
            )
            assert [answer.status_code for answer in answers] == expected
        assert answers[1].json()["details"] == [{"limit_events_per_second": 1.0}]
        key = await app.app.state.labs.key_cache.lookup(broken)
        assert key.rate_limit_per_second is None  # the deployment's default
        await wait_for_key_cache_reloads(app.app.state.labs.key_cache, 3)  # several reloads

    (line,) = invalid_rate_logs(caplog)  # once, not once per reload
    logged: dict[str, Any] = orjson.loads(line)
    assert logged["key_id"] == broken.split("_")[1]
    assert logged["rate_limit_per_second"] == "inf"
    assert broken not in line
    assert broken.split("_", 2)[2] not in line
    assert broken_hash not in line


async def test_a_mirrored_key_with_an_unusable_rate_gets_the_default(
    settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    new_key = generate_key()
    mirror_key = f"{settings.redis_key_prefix}keys"
    await redis.set(
        mirror_key,
        orjson.dumps([[new_key.key_id, "clubs", ["ingest"], new_key.key_hash, 1e308]]),
    )

    async def postgresql_down() -> list[Any]:
        raise OSError("connection refused")

    cache = KeyCache(postgresql_down, refresh_seconds=60, redis=redis, mirror_key=mirror_key)
    caplog.set_level(logging.ERROR, logger="labs_analytics.auth.cache")
    assert await cache.refresh() is False

    key = await cache.lookup(new_key.plaintext)
    assert key is not None
    assert cache.source == "redis-mirror"
    assert key.rate_limit_per_second is None
    assert len(invalid_rate_logs(caplog)) == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rate_limit_events_per_second", "inf"),
        ("rate_limit_events_per_second", "nan"),
        ("rate_limit_events_per_second", "-1"),
        ("rate_limit_events_per_second", "1e-300"),
        ("rate_limit_events_per_second", "1e7"),
        ("rate_limit_burst_seconds", "inf"),
        ("rate_limit_burst_seconds", "nan"),
        ("rate_limit_burst_seconds", "0"),
        ("rate_limit_burst_seconds", "3601"),
    ],
)
def test_settings_refuse_a_default_rate_or_burst_the_token_bucket_cannot_use(
    name: str, value: str
) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(_env_file=None, **{name: value})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("rate_limit_events_per_second", "0", 0.0),  # no limit
        ("rate_limit_events_per_second", "0.001", 0.001),
        ("rate_limit_events_per_second", "1000000", 1_000_000.0),
        ("rate_limit_burst_seconds", "3600", 3600.0),
    ],
)
def test_settings_accept_the_bounds(name: str, value: str, expected: float) -> None:
    assert getattr(Settings(_env_file=None, **{name: value}), name) == expected
