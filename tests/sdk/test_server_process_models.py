"""The web process models beyond the plain ones: each under its real server, stopped by SIGTERM.

uvicorn ``--workers``, gunicorn ``--preload``, ``--max-requests`` and
``--threads`` (gthread). Every client has a flush interval of an hour, so what
PostgreSQL holds was delivered by a drain: the lifespan shutdown of each
uvicorn worker, the exit hook of each gunicorn worker (those recycled by
``--max-requests`` while the server runs, the others at SIGTERM). Each request
must be stored exactly once.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path

import asyncpg
import pytest

from labs_analytics.settings import Settings
from tests.helpers import (
    ServeProcess,
    count_events,
    create_key,
    event_rows,
    in_a_thread,
    new_product,
    wait_for,
)
from tests.sdk.frameworks import (
    ASGI,
    DJANGO,
    FLASK,
    WebApp,
    app_env,
    get_clubs,
    gunicorn,
    stored_once,
    uvicorn,
)

WSGI_APPS = [pytest.param(DJANGO, id="django"), pytest.param(FLASK, id="flask")]
MAX_REQUESTS = 5


@pytest.mark.parametrize("client", ["async", "sync"])
async def test_uvicorn_workers_each_drain_at_their_lifespan_shutdown(
    client: str,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    """``uvicorn --workers 2``: SIGTERM to the supervisor, which SIGTERMs each worker.

    Each worker is a spawned process that imported the app (and made its
    client) itself; the middleware flushes it at that worker's lifespan
    shutdown, as uvicorn then ends the process without exit hooks.
    """
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    env = app_env(key, shared_server.base_url, LABS_TEST_CLIENT=client)
    async with in_a_thread(
        uvicorn(ASGI.target, env, tmp_path, health_path="/healthz", workers=2)
    ) as (
        running,
        base_url,
    ):
        # A connection per request, many at once: both workers accept some.
        expected, served = await asyncio.to_thread(
            get_clubs, base_url, ASGI, range(1, 201), concurrency=16, keep_alive=False
        )
        workers = {answer.worker for answer in served}
        assert len(workers) == 2, served
        assert running.process.pid not in workers
        assert all(answer.loaded_in == answer.worker for answer in served)  # imported it itself
        assert await count_events(db, product) == 0
        assert await asyncio.to_thread(running.terminate) == 0, running.logs()

    assert "analytics." not in running.logs(), running.logs()  # nothing dropped or pending
    assert running.logs().count("Application shutdown complete.") == 2, running.logs()
    await stored_once(db, sdk_settings, product, expected)


@pytest.mark.parametrize("app", WSGI_APPS)
async def test_gunicorn_preload_each_forked_worker_drains_its_own_queue(
    app: WebApp,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    """``--preload``: the app, and its client, are made in the master, before the fork.

    Each worker starts over with an empty queue and its own sender, and its
    exit hook delivers what it tracked; the master, which tracked nothing,
    sends nothing.
    """
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    env = app_env(key, shared_server.base_url)
    args = ["--preload"]
    async with in_a_thread(
        gunicorn(app.target, env, tmp_path, health_path=app.health_path, args=args)
    ) as (
        running,
        base_url,
    ):
        expected, served = await asyncio.to_thread(
            get_clubs, base_url, app, range(1, 61), concurrency=4
        )
        master = running.process.pid
        assert {answer.loaded_in for answer in served} == {master}  # imported before the fork
        workers = {answer.worker for answer in served}
        assert len(workers) == 2, served
        assert master not in workers
        assert await count_events(db, product) == 0
        assert await asyncio.to_thread(running.terminate) == 0, running.logs()

    await stored_once(db, sdk_settings, product, expected)


@pytest.mark.parametrize("app", WSGI_APPS)
async def test_gunicorn_max_requests_each_recycled_worker_drains_as_it_leaves(
    app: WebApp,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    """``--max-requests 5``: workers leave mid-run, each through its exit hook.

    What a recycled worker tracked is in PostgreSQL while gunicorn still runs
    (the flush interval is an hour: only its drain can have sent it); what
    the last workers tracked comes with their SIGTERM.
    """
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    env = app_env(key, shared_server.base_url)
    args = [f"--max-requests={MAX_REQUESTS}"]
    async with in_a_thread(
        gunicorn(app.target, env, tmp_path, health_path=app.health_path, args=args)
    ) as (
        running,
        base_url,
    ):
        club_ids = range(1, 61)
        expected, served = await asyncio.to_thread(
            get_clubs, base_url, app, club_ids, concurrency=2
        )
        workers = {answer.worker for answer in served}
        assert len(workers) >= 60 // MAX_REQUESTS, served  # recycled all along
        users_of: dict[int, set[str]] = defaultdict(set)
        for club_id, answer in zip(club_ids, served, strict=True):
            users_of[answer.worker].add(f"u_{club_id}")

        async def recycled_workers_delivered() -> bool:
            gone = {pid for pid in workers if not _alive(pid)}
            stored = {row["user_id"] for row in await event_rows(db, product)}
            return len(gone) >= len(workers) - 2 and all(users_of[pid] <= stored for pid in gone)

        await wait_for(
            recycled_workers_delivered, timeout=15, what="the events of every recycled worker"
        )
        assert await asyncio.to_thread(running.terminate) == 0, running.logs()

    restarts = running.logs().count("Autorestarting worker after current request.")
    assert restarts >= len(workers) - 2, running.logs()
    await stored_once(db, sdk_settings, product, expected)


@pytest.mark.parametrize("app", WSGI_APPS)
async def test_gunicorn_gthread_workers_drain_what_all_their_threads_tracked(
    app: WebApp,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    """``--threads 4`` (the gthread worker): many requests at once.

    The threads of a worker share its client; at SIGTERM the worker finishes
    its requests, stops its thread pool, and its exit hook drains the queue.
    (A connection per request: kept alive, they would all stay with the
    worker that accepted them first.)
    """
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    env = app_env(key, shared_server.base_url)
    async with in_a_thread(
        gunicorn(
            app.target,
            env,
            tmp_path,
            health_path=app.health_path,
            worker_class="gthread",
            args=["--threads=4"],
        )
    ) as (running, base_url):
        expected, served = await asyncio.to_thread(
            get_clubs, base_url, app, range(1, 401), concurrency=24, keep_alive=False
        )
        threads: dict[int, set[int]] = defaultdict(set)
        for answer in served:
            threads[answer.worker].add(answer.thread)
        assert len(threads) == 2, served
        assert all(len(used) > 1 for used in threads.values()), threads  # the pools were used
        assert await count_events(db, product) == 0
        assert await asyncio.to_thread(running.terminate) == 0, running.logs()

    await stored_once(db, sdk_settings, product, expected)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
