"""The asyncio client under a real FastAPI app, the middleware, and ``timed``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsClient, AnalyticsMiddleware, AsyncAnalyticsClient
from tests.helpers import (
    ServeProcess,
    create_key,
    duplicated_ids,
    event_rows,
    new_product,
    wait_for_events,
)


def by_name(stored: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for row in stored:
        out.setdefault(str(row["name"]), []).append(row)
    return out


async def test_async_client_and_middleware_track_requests_of_a_fastapi_app(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    analytics = AsyncAnalyticsClient(key, base_url=shared_server.base_url, flush_interval=0.05)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        assert await analytics.aclose() == 0  # the app's shutdown delivers what is left

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(AnalyticsMiddleware, client=analytics, exclude_routes={"/healthz"})

    @app.get("/clubs/{club_id}")
    @analytics.timed("club.load")
    async def get_club(club_id: int) -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"id": club_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            assert (await http.get("/clubs/42")).json() == {"id": 42}
            assert (await http.get("/clubs/7")).status_code == 200
            assert (await http.get("/boom")).status_code == 500
            assert (await http.get("/no/such/page")).status_code == 404
            assert (await http.get("/healthz")).status_code == 200
            stats = analytics.stats()
            assert stats.dropped == 0

    await wait_for_events(db, 6, product=product)
    events = by_name(await event_rows(db, product))
    requests = sorted(
        (row["properties"] for row in events["http.request"]),
        key=lambda p: (str(p["route"]), p["status_code"]),  # type: ignore[index]
    )
    for properties in requests:
        assert properties.pop("duration_ms") >= 0  # type: ignore[attr-defined]
    assert requests == [
        {"method": "GET", "route": "/boom", "status_code": 500, "error_type": "RuntimeError"},
        {"method": "GET", "route": "/clubs/{club_id}", "status_code": 200},
        {"method": "GET", "route": "/clubs/{club_id}", "status_code": 200},
        {"method": "GET", "route": None, "status_code": 404},
    ]
    loads = [row["properties"] for row in events["club.load"]]
    assert len(loads) == 2
    for load in loads:
        assert load["success"] is True  # type: ignore[index]
        assert load["duration_ms"] >= 10  # type: ignore[index]
    assert set(events) == {"http.request", "club.load"}
    assert await duplicated_ids(db) == []


async def test_the_middleware_works_with_the_sync_client_too(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    app = FastAPI()

    @app.post("/clubs/{club_id}/members/{member_id}")
    def add_member(club_id: int, member_id: str) -> dict[str, str]:
        return {"member": member_id}

    with AnalyticsClient(key, base_url=shared_server.base_url) as analytics:
        app.add_middleware(AnalyticsMiddleware, client=analytics, event_name="api.call")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            assert (await http.post("/clubs/3/members/u_9")).status_code == 200

    await wait_for_events(db, 1, product=product)
    (row,) = await event_rows(db, product)
    assert row["name"] == "api.call"
    assert row["properties"]["route"] == "/clubs/{club_id}/members/{member_id}"
    assert row["properties"]["method"] == "POST"


async def test_timed_tracks_duration_success_and_the_error_of_each_call(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    with AnalyticsClient(key, base_url=shared_server.base_url) as client:

        @client.timed("report.build", kind="weekly")
        def build(fail: bool) -> int:
            time.sleep(0.02)
            if fail:
                raise ValueError("no data for week 12")
            return 7

        assert build(False) == 7
        with pytest.raises(ValueError, match="no data"):
            build(True)
        with client.timed("import.rows", user="u_5") as span:
            span.properties["rows"] = 12
        with pytest.raises(KeyError), client.timed("import.rows"):
            raise KeyError("club_id")

    async with AsyncAnalyticsClient(key, base_url=shared_server.base_url) as aclient:

        @aclient.timed("search.query")
        async def search(query: str) -> str:
            await asyncio.sleep(0.01)
            return query

        assert await search("chess") == "chess"
        with pytest.raises(asyncio.TimeoutError):
            async with aclient.timed("cache.warm"):
                raise TimeoutError
        assert await aclient.flush() == 0

    await wait_for_events(db, 6, product=product)
    events = by_name(await event_rows(db, product))
    builds = sorted(
        (row["properties"] for row in events["report.build"]),
        key=lambda p: p["success"],  # type: ignore[index]
    )
    assert builds[0]["success"] is False  # type: ignore[index]
    assert builds[0]["error_type"] == "ValueError"  # type: ignore[index]
    assert builds[0]["error_message"] == "no data for week 12"  # type: ignore[index]
    assert builds[1]["success"] is True  # type: ignore[index]
    assert "error_type" not in builds[1]
    for properties in builds:
        assert properties["kind"] == "weekly"  # type: ignore[index]
        assert properties["duration_ms"] >= 20  # type: ignore[index]
    imports = {row["properties"]["success"]: row for row in events["import.rows"]}  # type: ignore[index]
    assert imports[True]["properties"]["rows"] == 12  # type: ignore[index]
    assert imports[True]["user_id"] == "u_5"
    assert imports[False]["properties"]["error_type"] == "KeyError"  # type: ignore[index]
    (query,) = events["search.query"]
    assert query["properties"]["success"] is True  # type: ignore[index]
    assert query["properties"]["duration_ms"] >= 10  # type: ignore[index]
    (warm,) = events["cache.warm"]
    assert warm["properties"]["error_type"] == "TimeoutError"  # type: ignore[index]


async def test_async_flush_returns_what_is_still_pending() -> None:
    # Nothing listens on port 9 of localhost: the batch keeps being retried.
    async with AsyncAnalyticsClient(
        "lak_0_x", base_url="http://127.0.0.1:9", shutdown_timeout=0.3
    ) as client:
        for i in range(3):
            client.track("page.view", properties={"i": i})
        started = time.monotonic()
        assert await client.flush(timeout=0.3) == 3
        # It waited its timeout, then returned: not at delivery (never: nothing
        # listens), nor after the 120 s retry budget. A generous upper bound: it only
        # catches a flush that ignores its timeout, whatever the machine's load.
        assert 0.25 <= time.monotonic() - started < 10
        assert client.stats().retried >= 1
    assert client.stats().failed_by_reason == {"shutdown_timeout": 3}


def _collect(holder: list[AsyncAnalyticsClient]) -> None:
    holder.clear()
    gc.collect()


def test_an_async_client_collected_with_events_pending_warns() -> None:
    holder = [AsyncAnalyticsClient("lak_0_x", base_url="http://127.0.0.1:9")]
    assert holder[0].track("page.view") is not None  # no running loop: queued, no task yet
    with pytest.warns(ResourceWarning, match="garbage-collected with 1 events pending"):
        _collect(holder)
