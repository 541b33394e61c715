"""The backlog counter tells the events in the stream, never less than zero, whatever
road the entries took: the API, the spool's replay, `deadletters replay`, or an
XADD by something else (an older version, a script, a person).

It showed -1 after an entry was dead-lettered: that entry had reached the
stream uncounted, and moving it out took its event off anyway. Now counting
out stops at zero, an empty stream means a zero counter, and a recount of the
stream, in bounded steps, sets the counter to what the stream holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from labs_analytics.embedded import free_port
from labs_analytics.queue import backlog as backlog_module
from labs_analytics.queue import consumer as consumer_module
from labs_analytics.queue.backlog import BacklogCounter, Recount, recount_key
from labs_analytics.queue.consumer import PoisonEntry, StreamConsumer, StreamEntry
from labs_analytics.queue.entries import entry_events
from labs_analytics.queue.producer import RateLimit, StreamProducer
from labs_analytics.settings import Settings
from tests.helpers import (
    ApiFactory,
    RunningApi,
    create_key,
    make_events,
    run_cli_async,
    stream_events,
    wait_for,
    wait_for_events,
)

# --- helpers ------------------------------------------------------------------


async def counter(redis: Redis, settings: Settings) -> int:
    return int(await redis.get(settings.backlog_key) or 0)


async def metric(app: RunningApi, name: str) -> float:
    text = (await app.client.get("/metrics")).text
    [line] = [m for m in text.splitlines() if m.startswith(f"{name} ")]
    return float(line.split()[1])


async def reported(app: RunningApi) -> tuple[int | None, float]:
    """The backlog as /readyz and /metrics tell it."""
    ready = (await app.client.get("/readyz")).json()["backlog"]["events"]
    return ready, await metric(app, "labs_stream_backlog_events")


async def recount(backlog: BacklogCounter) -> Recount:
    """Steps until the recount is done (not resting in between: built with a tiny rest)."""
    for _ in range(1000):
        step = await backlog.recount_step()
        if step.status in ("done", "invalid"):
            return step
    raise AssertionError("the recount never finished")


def foreign_entry(n: int) -> dict[str, str]:
    """An entry as something other than this service would write it: not counted."""
    return {"v": "1", "n": str(n), "events": "[]"}


def counted_entry(n: int) -> dict[bytes, bytes]:
    return {b"v": b"1", b"n": str(n).encode(), b"events": b"[]"}


@pytest.fixture
async def producer(settings: Settings, redis: Redis) -> AsyncIterator[StreamProducer]:
    made = StreamProducer(redis, stream_key=settings.stream_key, backlog_key=settings.backlog_key)
    try:
        yield made
    finally:
        await made.aclose()


async def append(producer: StreamProducer, n: int) -> str:
    appended = await producer.append_fields(
        counted_entry(n), events=n, rate_limit=RateLimit.unlimited()
    )
    return appended.entry_id


@pytest.fixture
async def consumer(settings: Settings, redis: Redis) -> StreamConsumer:
    made = StreamConsumer(
        redis,
        stream_key=settings.stream_key,
        group=settings.consumer_group,
        consumer="test",
        backlog_key=settings.backlog_key,
        dead_letter_key=settings.dead_letter_stream_key,
    )
    await made.ensure_group()
    return made


def backlog_counter(redis: Redis, settings: Settings, **bounds: int) -> BacklogCounter:
    return BacklogCounter(
        redis,
        stream_key=settings.stream_key,
        backlog_key=settings.backlog_key,
        rest_seconds=0.001,
        **bounds,
    )


def entry(entry_id: str, n: int) -> StreamEntry:
    return StreamEntry(entry_id, counted_entry(n))


def poison(entry_id: str, n: int) -> PoisonEntry:
    return PoisonEntry(entry(entry_id, n), "undecodable entry", "{}")


# --- never negative -----------------------------------------------------------


async def test_dead_lettering_an_entry_that_came_in_uncounted_leaves_zero_not_minus_one(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api(run_flusher=False) as app:
        # Written by something that is not our API, in a format no flusher reads.
        await redis.xadd(app.settings.stream_key, {"v": "9", "n": "1", "events": "[]"})
        assert await counter(redis, app.settings) == 0
    async with api() as app:

        async def dead_lettered() -> bool:
            return int(await db.fetchval("SELECT count(*) FROM dead_letters")) == 1

        await wait_for(dead_lettered, what="the entry in dead_letters")
        assert await redis.xlen(app.settings.stream_key) == 0
        assert await counter(redis, app.settings) == 0  # was -1
        assert await reported(app) == (0, 0.0)


async def test_counting_out_more_than_was_counted_in_stops_at_zero(
    settings: Settings, redis: Redis, consumer: StreamConsumer
) -> None:
    first = (await redis.xadd(settings.stream_key, foreign_entry(3))).decode()
    second = (await redis.xadd(settings.stream_key, foreign_entry(4))).decode()
    third = (await redis.xadd(settings.stream_key, foreign_entry(5))).decode()
    # The stream is not empty after either: no reset to zero hides the drift.
    assert await consumer.ack_and_delete([entry(first, 3)]) == 3
    assert await counter(redis, settings) == 0  # was -3
    await consumer.move_to_dead_letters([poison(second, 4)])
    assert await counter(redis, settings) == 0  # was -7
    assert await redis.xlen(settings.stream_key) == 1

    found = await recount(backlog_counter(redis, settings))
    assert (found.status, found.events, found.previous) == ("done", 5, 0)
    assert await counter(redis, settings) == 5
    await consumer.ack_and_delete([entry(third, 5)])
    assert await counter(redis, settings) == 0


async def test_a_counter_left_negative_by_an_older_version_reads_as_zero_and_is_recounted(
    api: ApiFactory, settings: Settings, redis: Redis, producer: StreamProducer
) -> None:
    async with api(run_flusher=False) as app:
        await redis.set(app.settings.backlog_key, -4)
        ready = (await app.client.get("/readyz")).json()
        assert ready["backlog"]["events"] == 0
    await redis.delete(recount_key(settings.backlog_key))  # the app's recount rests: no more
    await redis.set(settings.backlog_key, -4)
    await append(producer, 2)  # the append script counts on from -4: -2
    found = await recount(backlog_counter(redis, settings))
    assert (found.events, found.previous, found.corrected) == (2, -2, True)
    assert await counter(redis, settings) == 2


# --- true, whatever the road ---------------------------------------------------


async def test_a_recount_finds_entries_written_by_something_else(
    settings: Settings, redis: Redis, producer: StreamProducer
) -> None:
    await append(producer, 10)
    await redis.xadd(settings.stream_key, foreign_entry(7))
    await redis.xadd(settings.stream_key, {"v": "1", "events": "[]"})  # no n: one event
    await redis.xadd(settings.stream_key, foreign_entry(-2))  # not a count: one event
    await append(producer, 3)
    assert await counter(redis, settings) == 13
    found = await recount(backlog_counter(redis, settings))
    assert (found.events, found.previous, found.corrected) == (22, 13, True)
    assert await counter(redis, settings) == 22 == await stream_events(redis, settings)
    # A counter already true is left as it is.
    again = await recount(backlog_counter(redis, settings))
    assert (again.events, again.corrected) == (22, False)


async def test_the_recount_and_the_flusher_weigh_every_entry_alike(
    settings: Settings, redis: Redis
) -> None:
    # The recount (Lua) and the ack (Python's event_count) must read `n` the
    # same way, or every recount would "correct" what the acks did.
    odd = ["3", "0", "", "-2", "3.0", "1e3", " 3", "0x10", "3_0", "999999999", "1234567890"]
    for n in [*odd, "\u0663"]:  # an Arabic-Indic three: a digit to Python's str, not to us
        await redis.xadd(settings.stream_key, {"v": "1", "n": n, "events": "[]"})
    await redis.xadd(settings.stream_key, {"v": "1", "events": "[]"})
    expected = await stream_events(redis, settings)
    assert expected == 3 + 0 + 999999999 + 10  # ten entries whose n is not a count weigh 1
    found = await recount(backlog_counter(redis, settings))
    assert found.events == expected


async def test_a_recount_in_steps_stays_exact_while_entries_come_and_go(
    settings: Settings, redis: Redis, producer: StreamProducer, consumer: StreamConsumer
) -> None:
    ids = [await append(producer, n) for n in range(1, 11)]  # 55 events, counted
    await redis.xadd(settings.stream_key, foreign_entry(100))
    backlog = backlog_counter(redis, settings, step_entries=3)

    assert (await backlog.recount_step()).status == "counting"  # counted ids[0..2]
    assert (await backlog.recount_step()).status == "counting"  # counted ids[3..5]
    cursor = (await redis.hget(recount_key(settings.backlog_key), "cursor")).decode()
    assert cursor == ids[5]
    # Behind the recount's cursor and ahead of it, entries leave; new ones arrive.
    await consumer.ack_and_delete([entry(ids[1], 2), entry(ids[8], 9)])
    await consumer.move_to_dead_letters([poison(ids[4], 5)])
    await append(producer, 20)
    # A late ack of what is gone already takes nothing off, anywhere.
    assert await consumer.ack_and_delete([entry(ids[1], 2)]) == 0

    found = await recount(backlog)
    truth = await stream_events(redis, settings)
    assert truth == 55 - 2 - 9 - 5 + 20 + 100
    assert (found.events, found.previous) == (truth, truth - 100)  # only the foreign entry
    assert await counter(redis, settings) == truth
    assert await redis.hget(recount_key(settings.backlog_key), "cursor") is None


async def test_a_recount_ends_however_fast_entries_arrive(
    settings: Settings, redis: Redis, producer: StreamProducer
) -> None:
    for _ in range(6):
        await append(producer, 1)
    await redis.xadd(settings.stream_key, foreign_entry(5))
    backlog = backlog_counter(redis, settings, step_entries=2)
    statuses = []
    for _ in range(10):
        step = await backlog.recount_step()
        statuses.append(step.status)
        if step.status == "done":
            break
        for _ in range(3):  # faster than the recount reads
            await append(producer, 1)
    # Only the 7 entries there when it began: 2 + 2 + 2 + 1, then done.
    assert statuses == ["counting", "counting", "counting", "done"]
    assert await counter(redis, settings) == await stream_events(redis, settings) == 20


async def test_a_counter_stopped_at_zero_during_a_recount_starts_it_over(
    settings: Settings, redis: Redis, producer: StreamProducer, consumer: StreamConsumer
) -> None:
    await append(producer, 2)
    foreign = (await redis.xadd(settings.stream_key, foreign_entry(3))).decode()
    backlog = backlog_counter(redis, settings, step_entries=1)
    assert (await backlog.recount_step()).status == "counting"  # began: counter 2, events 5
    await consumer.ack_and_delete([entry(foreign, 3)])  # 2 - 3: stops at zero
    # The error it measured (2 - 5) no longer holds: a recount from the start.
    found = await recount(backlog)
    assert (found.events, found.previous) == (2, 0)
    assert await counter(redis, settings) == 2 == await stream_events(redis, settings)


async def test_appends_sent_together_share_one_entry_and_count_their_events(
    settings: Settings, redis: Redis, producer: StreamProducer
) -> None:
    unlimited = RateLimit.unlimited()
    appended = await asyncio.gather(  # started in one turn of the loop: one script call
        producer.append_events(b'{"a":1},{"a":2}', events=2, rate_limit=unlimited),
        producer.append_events(b"", events=0, rate_limit=unlimited),
        producer.append_events(b'{"a":3}', events=1, rate_limit=unlimited),
    )
    assert len({a.entry_id for a in appended}) == 1
    entries: Any = await redis.xrange(settings.stream_key)
    assert [entry_id.decode() for entry_id, _ in entries] == [appended[0].entry_id]
    fields = entries[0][1]
    assert entry_events(fields) == 3
    assert orjson.loads(fields[b"events"]) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert await counter(redis, settings) == 3

    # A call whose appends hold no event writes nothing and counts nothing.
    alone = await producer.append_events(b"", events=0, rate_limit=unlimited)
    assert (alone.entry_id, alone.backlog) == ("", 3)
    assert await redis.xlen(settings.stream_key) == 1


async def test_a_step_reads_at_most_its_bytes_however_large_the_entries(
    settings: Settings, redis: Redis, producer: StreamProducer
) -> None:
    for _ in range(4):
        await producer.append_fields(
            {b"v": b"1", b"n": b"1", b"events": b"x" * 100_000},
            events=1,
            rate_limit=RateLimit.unlimited(),
        )
    backlog = backlog_counter(redis, settings, step_bytes=150_000)
    steps = [await backlog.recount_step() for _ in range(3)]
    assert [s.status for s in steps] == ["counting", "counting", "done"]  # 2 + 2 + end
    assert steps[-1].events == 4


async def test_entries_replayed_from_the_spool_are_counted(
    api: ApiFactory, db: asyncpg.Connection, redis: Redis
) -> None:
    del db
    async with api(run_flusher=False, redis_url=f"redis://127.0.0.1:{free_port()}/0") as app:
        key = await create_key(app.settings)
        for _ in range(3):
            assert (await app.post({"events": make_events(4)}, key)).status_code == 202
        assert app.app.state.labs.queue.spool.segments()  # Redis away: spooled
    async with api(run_flusher=False) as app:

        async def replayed() -> bool:
            return await redis.xlen(app.settings.stream_key) == 3

        await wait_for(replayed, what="the spool replayed into the stream")
        assert await counter(redis, app.settings) == 12
        assert await reported(app) == (12, 12.0)


async def test_dead_letters_replayed_are_counted_and_counted_out_once_flushed(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    async with api(run_flusher=False, max_deliveries=1) as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(3)}, key)).status_code == 202
        await redis.xgroup_create(settings.stream_key, settings.consumer_group, id="0")
        # A flusher that died holding it: the next delivery is one too many.
        await redis.xreadgroup(settings.consumer_group, "ghost", {settings.stream_key: ">"})
    async with api(max_deliveries=1):

        async def dead_lettered() -> bool:
            return int(await db.fetchval("SELECT count(*) FROM dead_letters")) == 1

        await wait_for(dead_lettered, what="the entry in dead_letters")
    assert await counter(redis, settings) == 0

    replayed = await run_cli_async(settings, "deadletters", "replay")
    assert replayed.returncode == 0, replayed.stderr
    async with api(run_flusher=False) as app:
        assert await counter(redis, settings) == 3
        assert await reported(app) == (3, 3.0)
    async with api() as app:
        await wait_for_events(db, 3)

        async def drained() -> bool:
            return await counter(redis, settings) == 0

        await wait_for(drained, what="the backlog counted out")
        assert await reported(app) == (0, 0.0)


async def test_the_api_recounts_by_itself_and_reports_the_truth(
    api: ApiFactory, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backlog_module, "RECOUNT_REST_SECONDS", 0.05)
    async with api(run_flusher=False) as app:
        key = await create_key(app.settings)
        assert (await app.post({"events": make_events(5)}, key)).status_code == 202
        corrections = await metric(app, "labs_stream_backlog_corrections_total")
        await redis.xadd(app.settings.stream_key, foreign_entry(7))

        async def told_true() -> bool:
            return await reported(app) == (12, 12.0)

        await wait_for(told_true, what="/readyz and /metrics to count the foreign entry")
        assert await metric(app, "labs_stream_backlog_corrections_total") == corrections + 1


async def test_a_counter_that_is_not_a_number_is_left_for_a_person(
    settings: Settings, redis: Redis, producer: StreamProducer
) -> None:
    await append(producer, 2)
    await redis.set(settings.backlog_key, "not a number")
    found = await recount(backlog_counter(redis, settings))
    assert (found.status, found.raw) == ("invalid", "not a number")
    assert await redis.get(settings.backlog_key) == b"not a number"


async def test_a_batch_larger_than_one_script_call_is_acknowledged_deleted_and_counted_out(
    settings: Settings, redis: Redis, consumer: StreamConsumer
) -> None:
    size = 2 * consumer_module.ENTRIES_PER_SCRIPT_CALL + 7  # three calls, the last one short
    ids = [(await redis.xadd(settings.stream_key, counted_entry(2))).decode() for _ in range(size)]
    read = await consumer.read_new(count=size, block_ms=1)
    assert [item.entry_id for item in read] == ids
    # One was taken over and deleted by another flusher, which counted it out;
    # one more arrived after the read.
    await redis.xdel(settings.stream_key, ids[-1])
    await redis.xadd(settings.stream_key, counted_entry(3))
    await redis.set(settings.backlog_key, 2 * (size - 1) + 3)

    assert await consumer.ack_and_delete(read) == 2 * (size - 1)
    assert await counter(redis, settings) == 3
    assert await redis.xlen(settings.stream_key) == 1
    pending = await redis.xpending(settings.stream_key, settings.consumer_group)
    assert pending["pending"] == 0
