"""Connections to PostgreSQL: a SQLAlchemy engine for simple queries, an asyncpg pool for COPY.

Neither connects when built: PostgreSQL may be down when a process starts,
and ingest must not care.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from labs_analytics.settings import to_asyncpg_dsn, to_sqlalchemy_url
from labs_analytics.storage.bulk_writer import prepare_connection

CONNECT_TIMEOUT_SECONDS = 5.0


def create_engine(database_url: str) -> AsyncEngine:
    return create_async_engine(
        to_sqlalchemy_url(database_url),
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
    )


def create_copy_pool(
    database_url: str, *, max_size: int = 3, application_name: str = "labs-analytics flusher"
) -> asyncpg.Pool:
    """A pool for the flusher; ``min_size=0`` so creating it never needs the server.

    Three connections: the flush, retention and the rollup refresh's watcher
    (``flusher.rollup_loop``) beside it, so neither makes a flush wait for a
    connection. The refresh itself has its own (``create_background_pool``).

    ``application_name`` shows in ``pg_stat_activity``: name the flusher, so an
    operator can tell which process holds which backend.
    """
    return asyncpg.create_pool(
        to_asyncpg_dsn(database_url),
        min_size=0,
        max_size=max_size,
        timeout=CONNECT_TIMEOUT_SECONDS,
        # Bounds every statement, COPY included: a COPY cut by a server crash
        # was seen to wait on the dead socket until this ran out.
        command_timeout=30,
        init=prepare_connection,
        server_settings={"application_name": application_name[:63]},
    )


def create_background_pool(database_url: str, *, application_name: str) -> asyncpg.Pool:
    """One connection for the rollup refresh, named so that the flusher can tell
    from ``pg_stat_activity`` when a flush waits on it (``flusher.rollup_loop``).
    ``min_size=0``, as for the copy pool."""
    return asyncpg.create_pool(
        to_asyncpg_dsn(database_url),
        min_size=0,
        max_size=1,
        timeout=CONNECT_TIMEOUT_SECONDS,
        server_settings={"application_name": application_name[:63]},
    )
