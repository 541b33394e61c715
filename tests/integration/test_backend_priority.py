"""The rollup refresh's backend runs niced, and only a backend proven ours is reniced.

Against the session's real PostgreSQL, which runs on this machine (embedded,
or the one TEST_DATABASE_URL names on 127.0.0.1): its backends are processes
here, so their niceness can be read with ``os.getpriority``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import asyncpg
import pytest

from labs_analytics.settings import Settings, to_asyncpg_dsn
from labs_analytics.storage.backend_priority import lower_backend_priority
from labs_analytics.storage.database import create_background_pool


def niceness_of(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def may_renice(pid: int) -> bool:
    """Raising another process's niceness needs root or the same user."""
    return os.geteuid() == 0 or os.stat(f"/proc/{pid}").st_uid == os.geteuid()


async def test_the_background_pool_nices_its_backend(settings: Settings) -> None:
    pool = await create_background_pool(
        settings.database_url, niceness=10, application_name="labs-analytics test"
    )
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            if not may_renice(pid):
                pytest.skip("PostgreSQL runs as another user and this test is not root")
            assert niceness_of(pid) == 10
            # Still a working connection: the refresh runs on it.
            assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") >= 0
    finally:
        await pool.close()


async def test_niceness_zero_leaves_the_backend_as_it_is(settings: Settings) -> None:
    pool = await create_background_pool(
        settings.database_url, niceness=0, application_name="labs-analytics test"
    )
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert niceness_of(pid) == niceness_of(parent_pid(pid))
    finally:
        await pool.close()


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
        return int(stat.read().rsplit(")", 1)[1].split()[1])


async def test_a_backend_it_cannot_prove_its_own_is_left_alone(settings: Settings) -> None:
    """Over the server's Unix socket the backend's title carries no client port to
    match, so the pid is not trusted: nothing is reniced, nothing raises."""
    tcp = await asyncpg.connect(to_asyncpg_dsn(settings.database_url))
    try:
        socket_dirs = await tcp.fetchval("SHOW unix_socket_directories")
        port = await tcp.fetchval("SELECT inet_server_port()")
    finally:
        await tcp.close()
    socket_dir = socket_dirs.split(",")[0].strip()
    if not socket_dir:
        pytest.skip("the server listens on no Unix socket")
    url = urlsplit(settings.database_url)
    conn = await asyncpg.connect(
        host=socket_dir, port=port, user=url.username, database=url.path.lstrip("/")
    )
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        before = niceness_of(pid)
        assert await lower_backend_priority(conn, 15) is False
        assert niceness_of(pid) == before
    finally:
        await conn.close()
