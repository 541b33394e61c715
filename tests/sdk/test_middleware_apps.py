"""AnalyticsMiddleware in whole applications: under a real uvicorn, and with mounts."""

from __future__ import annotations

import asyncio
import textwrap
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest

from labs_analytics.settings import Settings
from labs_analytics_client import AnalyticsMiddleware, AsyncAnalyticsClient
from tests.helpers import (
    ServeProcess,
    create_key,
    duplicated_ids,
    event_rows,
    in_a_thread,
    new_product,
    wait_for_events,
)
from tests.sdk.frameworks import app_env, uvicorn

# The README's plain set-up: the middleware, and a lifespan that never closes the client.
APP = """
import contextlib, os
from fastapi import FastAPI
from starlette.routing import Mount
from labs_analytics_client import AnalyticsClient, AnalyticsMiddleware, AsyncAnalyticsClient

Client = AsyncAnalyticsClient if os.environ["APP_CLIENT"] == "async" else AnalyticsClient
# Batches leave only on flush or exit: what is delivered, the shutdown delivered.
analytics = Client(os.environ["APP_KEY"], base_url=os.environ["APP_URL"],
                   flush_interval=30, batch_size=1000)


@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    analytics.track("app.stopped")  # tracked by the app's own shutdown: delivered too


async def static_files(scope, receive, send):  # a mounted app with no routes of its own
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"file"})


inner = FastAPI()
inner.get("/items/{item_id}")(lambda item_id: {"item": item_id})
sub = FastAPI()
sub.get("/things/{thing_id}")(lambda thing_id: {"thing": thing_id})
sub.get("/healthz")(lambda: "ok")
sub.mount("/inner", inner)
org = FastAPI()
org.get("/members/{member_id}")(lambda member_id: {"member": member_id})

app = FastAPI(lifespan=lifespan, routes=[Mount("/static", app=static_files)])
app.add_middleware(
    AnalyticsMiddleware, client=analytics, exclude_routes={"/ready", "/sub/healthz"}
)
app.get("/ready")(lambda: "ok")
app.get("/clubs/{club_id}")(lambda club_id: {"club": club_id})
app.mount("/sub", sub)
app.mount("/orgs/{org_id}", org)
"""

REQUESTS = {  # path: (times, the route recorded)
    "/clubs/{n}": (300, "/clubs/{club_id}"),
    "/sub/things/{n}": (20, "/sub/things/{thing_id}"),
    "/sub/inner/items/{n}": (10, "/sub/inner/items/{item_id}"),
    "/orgs/{n}/members/7": (10, "/orgs/{org_id}/members/{member_id}"),
    "/static/{n}.css": (5, "/static"),
    "/sub/healthz": (5, None),  # excluded by its full template
}


@pytest.mark.parametrize("client", ["async", "sync"])
async def test_a_uvicorn_app_with_the_middleware_delivers_everything_at_sigterm(
    client: str,
    tmp_path: Path,
    shared_server: ServeProcess,
    sdk_settings: Settings,
    db: asyncpg.Connection,
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    (tmp_path / "app_under_test.py").write_text(textwrap.dedent(APP))
    app_settings = {"APP_KEY": key, "APP_URL": shared_server.base_url, "APP_CLIENT": client}
    env = app_env(key, shared_server.base_url, **app_settings)
    # --root-path: a proxy's prefix, never part of a route
    args = ["--app-dir", str(tmp_path), "--root-path", "/proxy"]
    async with in_a_thread(
        uvicorn("app_under_test:app", env, tmp_path, health_path="/ready", args=args)
    ) as (running, base_url):
        async with httpx.AsyncClient(base_url=base_url) as http:
            for path, (times, _) in REQUESTS.items():
                for n in range(times):
                    assert (await http.get(path.format(n=n))).status_code == 200
        await asyncio.to_thread(running.terminate, timeout=60)
    assert "analytics." not in running.logs()  # nothing dropped, failed or left pending

    expected = Counter({route: times for times, route in REQUESTS.values() if route})
    total = sum(expected.values()) + 1  # and the app's "app.stopped"
    await wait_for_events(db, total, product=product, timeout=30)
    stored = await event_rows(db, product)
    assert len(stored) == total
    assert Counter(row["name"] for row in stored) == {"http.request": total - 1, "app.stopped": 1}
    routes = Counter(row["properties"]["route"] for row in stored if row["name"] == "http.request")
    assert routes == expected
    assert await duplicated_ids(db) == []


async def test_a_client_the_app_closed_itself_is_left_alone_at_shutdown(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection
) -> None:
    """The README's lifespan example with the middleware too: closing twice is harmless."""
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    analytics = AsyncAnalyticsClient(key, base_url=shared_server.base_url, flush_interval=30)

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def, type-arg]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            assert await analytics.aclose() == 0  # the app's own shutdown closes the client
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AnalyticsMiddleware(app, client=analytics)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return next(messages)

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=middleware), base_url="http://app"
    ) as http:
        assert (await http.get("/x")).status_code == 204
    await middleware({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    await wait_for_events(db, 1, product=product)
    assert len(await event_rows(db, product)) == 1
