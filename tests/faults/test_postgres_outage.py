"""PostgreSQL is off the ingest path: stop it, and ingest does not notice."""

from __future__ import annotations

import asyncio

import asyncpg

from labs_analytics.embedded import EmbeddedPostgres
from labs_analytics.settings import to_asyncpg_dsn
from tests.helpers import (
    ApiFactory,
    RunningApi,
    create_key,
    duplicated_ids,
    make_events,
    wait_for,
    wait_for_events,
)


async def failed_flushes(app: RunningApi) -> float:
    """Flush attempts that failed, as this process's /metrics counts them (all tests')."""
    exposition = (await app.client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith('labs_flush_batches_total{status="failed"}')
    )


async def wait_for_failed_flushes(app: RunningApi, since: float, failures: int) -> None:
    async def failed() -> bool:
        return await failed_flushes(app) >= since + failures

    await wait_for(failed, what=f"{failures} failed flush attempts")


async def test_ingest_answers_202_while_postgres_is_stopped_and_every_event_lands_after(
    api: ApiFactory, postgres_server: EmbeddedPostgres, db: asyncpg.Connection
) -> None:
    await db.close()  # our own connection would die with the server
    async with api() as app:
        key = await create_key(app.settings)
        sent: set[str] = set()

        async def post_batches(n: int) -> None:
            for _ in range(n):
                events = make_events(10)
                response = await app.post({"events": events}, key)
                assert response.status_code == 202, response.text
                sent.update(e["event_id"] for e in events)

        await post_batches(5)
        failed_before = await failed_flushes(app)
        await asyncio.to_thread(postgres_server.stop)
        await post_batches(20)  # auth, validation and queueing: none of it needs PostgreSQL
        ready = (await app.client.get("/readyz")).json()
        assert ready["status"] == "ready"
        assert ready["postgresql"] == "down"
        # The flusher fails, and fails again on its retry, meanwhile.
        await wait_for_failed_flushes(app, failed_before, 2)
        await asyncio.to_thread(postgres_server.start)
        await post_batches(5)

        conn = await asyncpg.connect(to_asyncpg_dsn(app.settings.database_url))
        try:
            await wait_for_events(conn, len(sent), timeout=20)
            stored = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM events")}
            assert stored == sent
            assert await duplicated_ids(conn) == []
        finally:
            await conn.close()


async def test_an_api_process_started_during_the_outage_still_knows_the_keys(
    api: ApiFactory, postgres_server: EmbeddedPostgres, db: asyncpg.Connection
) -> None:
    await db.close()
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        await app.app.state.labs.key_cache.refresh()  # mirrored to Redis on refresh

    await asyncio.to_thread(postgres_server.stop)
    async with api(run_flusher=False) as cold_started:
        assert cold_started.app.state.labs.key_cache.source == "redis-mirror"
        response = await cold_started.post({"events": make_events(3)}, key)
        assert response.status_code == 202, response.text


async def test_a_service_started_during_the_outage_accepts_and_its_flusher_waits(
    api: ApiFactory, postgres_server: EmbeddedPostgres, db: asyncpg.Connection
) -> None:
    await db.close()
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        await app.app.state.labs.key_cache.refresh()

    await asyncio.to_thread(postgres_server.stop)
    async with api() as cold_started:  # flusher included: it must not crash, only wait
        failed_before = await failed_flushes(cold_started)
        events = make_events(20)
        assert (await cold_started.post({"events": events}, key)).status_code == 202
        # It read them, and fails to write them (again, on its retry) meanwhile.
        await wait_for_failed_flushes(cold_started, failed_before, 2)
        await asyncio.to_thread(postgres_server.start)
        conn = await asyncpg.connect(to_asyncpg_dsn(cold_started.settings.database_url))
        try:
            await wait_for_events(conn, 20, timeout=20)
            stored = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM events")}
            assert stored == {e["event_id"] for e in events}
        finally:
            await conn.close()
