"""The Django middleware in a Django project served by gunicorn (2 sync workers)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx

from labs_analytics.settings import Settings
from tests.helpers import ServeProcess, count_events, create_key, wait_for_events
from tests.sdk.frameworks import app_env, gunicorn, request_events
from tests.sdk.support import new_product, rows

CLUB = "/api/clubs/<int:club_id>/"  # the include()d prefix joined to the pattern


async def test_every_request_is_stored_once_with_its_route_template_when_gunicorn_stops(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    product = new_product()
    key = await create_key(sdk_settings, product=product)
    env = app_env(key, shared_server.base_url)
    app = "tests.sdk.apps.django_site.wsgi"
    with gunicorn(app, env, tmp_path, health_path="/healthz/") as (server, base_url):
        with httpx.Client(base_url=base_url) as http:
            for club_id in range(1, 7):
                response = http.get(f"/api/clubs/{club_id}/", headers={"X-User": f"u_{club_id}"})
                assert response.json() == {"club": club_id}
            assert http.post("/api/clubs/7/").status_code == 200
            assert http.get("/boom/").status_code == 500
            assert http.get("/boom/").status_code == 500
            assert http.get("/no/such/page").status_code == 404
        # An hour's flush interval: nothing was sent yet, the drain at exit must do it.
        assert await count_events(db, product) == 0
        assert server.terminate() == 0, server.logs()

    await wait_for_events(db, 10, product=product)
    stored = await rows(db, product)
    assert len({row["event_id"] for row in stored}) == len(stored) == 10
    expected = [
        *(("GET", CLUB, 200, None, f"u_{club_id}") for club_id in range(1, 7)),
        ("POST", CLUB, 200, None, None),
        ("GET", "/boom/", 500, "BoomError", None),
        ("GET", "/boom/", 500, "BoomError", None),
        ("GET", None, 404, None, None),  # no pattern matched: no route, never the raw path
    ]
    assert request_events(stored) == sorted(expected, key=repr)
