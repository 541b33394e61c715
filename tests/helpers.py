"""What many tests need: a running app, keys, events, and waiting for rows."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from labs_analytics.api.app import create_app
from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.embedded import EmbeddedPostgres, EmbeddedRedis
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_engine


@dataclass
class Servers:
    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None
    redis: EmbeddedRedis | None
    data_dir: Path


@dataclass
class RunningApi:
    client: httpx.AsyncClient
    settings: Settings
    app: Any

    async def post(self, body: Any, key: str | None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if isinstance(body, bytes | str):
            return await self.client.post("/v1/events", content=body, headers=headers, **kwargs)
        return await self.client.post("/v1/events", json=body, headers=headers, **kwargs)


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[RunningApi]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield RunningApi(client=client, settings=settings, app=app)


ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningApi]]


async def create_key(
    settings: Settings, product: str = "clubs", scopes: Iterable[Scope] = (Scope.INGEST,)
) -> str:
    engine = create_engine(settings.database_url)
    try:
        new_key = await KeyRepository(engine).create(product=product, scopes=scopes, label="test")
    finally:
        await engine.dispose()
    return new_key.plaintext


def make_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "name": "post.click",
        "user": "u_1",
        "timestamp": "2026-11-27T12:00:00Z",
        "properties": {"post_id": 42},
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def make_events(n: int, **overrides: Any) -> list[dict[str, Any]]:
    return [make_event(**overrides) for _ in range(n)]


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def count_events(db: asyncpg.Connection, product: str | None = None) -> int:
    if product is None:
        return int(await db.fetchval("SELECT count(*) FROM events"))
    return int(await db.fetchval("SELECT count(*) FROM events WHERE product = $1", product))


async def wait_for_events(
    db: asyncpg.Connection, expected: int, *, timeout: float = 10.0, product: str | None = None
) -> None:
    async def enough() -> bool:
        return await count_events(db, product) >= expected

    await wait_for(enough, timeout=timeout, what=f"{expected} rows in events")


async def duplicated_ids(db: asyncpg.Connection) -> list[uuid.UUID]:
    rows = await db.fetch("SELECT event_id FROM events GROUP BY event_id HAVING count(*) > 1")
    return [row["event_id"] for row in rows]
