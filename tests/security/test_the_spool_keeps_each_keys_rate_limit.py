"""With Redis away, the spool still holds every key to its rate, and itself to its size.

The spool used to take whatever came while Redis was unreachable, with no
rate limit: a 100/s key got 34,050 events accepted in 5.3 s. Now a token
bucket per key in the API process (same rate and burst) applies there, and
the spool refuses past SPOOL_MAX_BYTES.
"""

from __future__ import annotations

import time

import asyncpg

from labs_analytics.embedded import free_port
from labs_analytics.settings import Settings
from tests.helpers import ApiFactory, create_key, create_key_with_rate, make_events


def nowhere() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


async def test_a_100_per_second_key_gets_no_more_than_its_burst_and_rate_into_the_spool(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    del db  # requested for its clean tables
    limited = await create_key_with_rate(settings, 100)  # burst: 1,000 events
    other = await create_key(settings)
    async with api(run_flusher=False, redis_url=nowhere()) as app:
        accepted = 0
        retry_afters: list[int] = []
        started = time.monotonic()
        # Until the bucket has refused a few requests: its burst is spent, whatever
        # the machine's speed. (The time bound only stops a runaway loop.)
        while len(retry_afters) < 5 and time.monotonic() - started < 60:
            response = await app.post({"events": make_events(50)}, limited)
            if response.status_code == 202:
                accepted += 50
            else:
                assert response.status_code == 429, response.text
                retry_afters.append(int(response.headers["Retry-After"]))
        elapsed = time.monotonic() - started

        assert app.app.state.labs.queue.health.redis_up is False  # the spool took them
        # The burst, and no more than the refill of the time it took (one request's
        # worth of rounding): a slower machine takes longer and may refill more.
        assert 1000 <= accepted <= 1000 + 100 * elapsed + 50
        assert retry_afters
        assert all(seconds >= 1 for seconds in retry_afters)
        # Another key has its own bucket.
        assert (await app.post({"events": make_events(50)}, other)).status_code == 202


async def test_the_spool_never_grows_past_its_bound(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    del db
    key = await create_key(settings)
    limit = 40_000
    async with api(
        run_flusher=False,
        redis_url=nowhere(),
        spool_max_bytes=limit,
        rate_limit_events_per_second=0,
    ) as app:
        statuses = [
            (await app.post({"events": make_events(20)}, key)).status_code for _ in range(40)
        ]
        spool = app.app.state.labs.queue.spool
        assert 202 in statuses
        assert 503 in statuses
        assert set(statuses) == {202, 503}
        assert spool.total_bytes() <= limit


async def test_refused_work_is_charged_to_the_local_bucket_while_redis_is_away(
    api: ApiFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    del db
    key = await create_key_with_rate(settings, 1)  # a bucket of 10 with 10 events a request
    async with api(run_flusher=False, redis_url=nowhere(), max_events_per_request=10) as app:
        started = time.monotonic()
        statuses = [(await app.post(b"not json", key)).status_code for _ in range(14)]
        assert statuses[0] == 400
        assert statuses[-2:] == [429, 429]
        # The first failed charge marked Redis down: the rest did not wait on it.
        # Requests that each waited up to the Redis timeout would take up to 14 of
        # them; the bound is half that, generous for a busy machine.
        assert time.monotonic() - started < 7 * app.settings.redis_timeout_seconds
