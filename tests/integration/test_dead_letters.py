"""One bad entry never blocks the rest: poison is set aside with its error, the good land."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from labs_analytics.queue.entries import encode_entry
from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    count_events,
    create_key,
    make_events,
    make_record,
    run_cli_async,
    wait_for,
    wait_for_events,
)


async def dead_letter_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM dead_letters"))


async def test_undecodable_entry_between_good_ones_is_dead_lettered_and_the_good_land(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(5)}, key)).status_code == 202
        # Written by something that is not our API (an old version, a bug, a person).
        await redis.xadd(app.settings.stream_key, {"v": "1", "n": "3", "events": "[{garbage"})
        assert (await app.post({"events": make_events(5)}, key)).status_code == 202

    async with api() as app:
        await wait_for_events(db, 10)

        async def dead_lettered() -> bool:
            return await dead_letter_count(db) == 1

        await wait_for(dead_lettered, what="the poison entry in dead_letters")
    row = await db.fetchrow("SELECT * FROM dead_letters")
    assert row is not None
    assert row["kind"] == "entry"
    assert "undecodable" in row["error"]
    assert "[{garbage" in row["payload"]
    assert await redis.xlen(app.settings.stream_key) == 0
    assert await redis.xlen(app.settings.dead_letter_stream_key) == 0


async def test_event_postgresql_rejects_is_isolated_by_splitting_and_its_neighbours_land(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    # A NUL character is valid JSON but not valid jsonb. The API refuses it at
    # the door; this entry comes from elsewhere, so only the flusher can catch it.
    good = [make_record() for _ in range(9)]
    bad = make_record(properties={"note": "nul \u0000 inside"})
    entry = encode_entry([*good[:4], bad, *good[4:]])
    async with api() as app:
        await redis.xadd(app.settings.stream_key, entry)  # type: ignore[arg-type]
        await wait_for_events(db, 9)

        async def dead_lettered() -> bool:
            return await dead_letter_count(db) == 1

        await wait_for(dead_lettered, what="the bad event in dead_letters")
        failed = await db.fetchval("SELECT count(*) FROM ingest_batches WHERE status = 'failed'")
        assert failed >= 1
    assert await count_events(db) == 9
    row = await db.fetchrow("SELECT * FROM dead_letters")
    assert row is not None
    assert (row["kind"], row["event_id"], row["product"]) == ("event", bad.event_id, "clubs")
    assert "UntranslatableCharacter" in row["error"] or "\\u0000" in row["error"]
    assert await redis.xlen(app.settings.stream_key) == 0


async def test_entry_delivered_too_often_is_set_aside_unwritten(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(3)}, key)).status_code == 202
    stream, group = settings.stream_key, settings.consumer_group
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    # A flusher that crashes on this entry, over and over (each claim is a delivery).
    [[_, [(entry_id, _fields)]]] = await redis.xreadgroup(group, "crashing", {stream: ">"})
    for _ in range(settings.max_deliveries):
        await redis.xclaim(stream, group, "crashing", 0, [entry_id])

    async with api():

        async def set_aside() -> bool:
            return await dead_letter_count(db) == 1

        await wait_for(set_aside, what="the entry in dead_letters")
    row = await db.fetchrow("SELECT * FROM dead_letters")
    assert row is not None
    assert row["deliveries"] == settings.max_deliveries + 2
    assert "delivered" in row["error"]
    assert await count_events(db) == 0
    assert await redis.xlen(stream) == 0


async def test_deadletters_cli_lists_replays_and_purges(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    fixable = encode_entry([make_record(), make_record()])
    async with api(run_flusher=False, max_deliveries=1):
        await redis.xgroup_create(
            settings.stream_key, settings.consumer_group, id="0", mkstream=True
        )
        await redis.xadd(settings.stream_key, fixable)  # type: ignore[arg-type]
        await redis.xadd(settings.stream_key, {"v": "9", "n": "1", "events": "[]"})
    # Two deliveries (read, then reclaimed by a flusher) exceed max_deliveries=1.
    await redis.xreadgroup(settings.consumer_group, "ghost", {settings.stream_key: ">"})
    async with api(max_deliveries=1):

        async def two_letters() -> bool:
            return await dead_letter_count(db) == 2

        await wait_for(two_letters, what="two dead letters")

    listed = await run_cli_async(settings, "deadletters", "list")
    assert listed.returncode == 0, listed.stderr
    assert "delivered 2 times" in listed.stdout
    ids = [
        int(r["id"])
        for r in await db.fetch(
            'SELECT id FROM dead_letters WHERE payload NOT LIKE \'%"v":"9"%\' ORDER BY id'
        )
    ]
    replayed = await run_cli_async(settings, "deadletters", "replay", *map(str, ids))
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    async with api():
        await wait_for_events(db, 2)
    purged = await run_cli_async(settings, "deadletters", "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 1" in purged.stdout
    assert await dead_letter_count(db) == 0


async def test_txlog_cli_shows_committed_and_failed_batches(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    async with api() as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(4)}, key)).status_code == 202
        await wait_for_events(db, 4)
    result = await run_cli_async(settings, "txlog", "--since", "1h")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["FINISHED", "(UTC)", "STATUS"]
    assert any(" committed " in line and " 4 " in line for line in lines[1:])
    failed_only = await run_cli_async(settings, "txlog", "--failed", "--json")
    assert failed_only.returncode == 0
    assert failed_only.stdout.strip() == ""
