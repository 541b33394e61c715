"""An ingest-only key may live in a browser: CORS lets the configured origins call us."""

from __future__ import annotations

from tests.helpers import ApiFactory, create_key, make_event

ORIGIN = "https://clubs.example.edu"


async def test_configured_origin_may_post_events_from_a_browser(api: ApiFactory) -> None:
    async with api(run_flusher=False, cors_origins=[ORIGIN]) as app:
        preflight = await app.client.options(
            "/v1/events",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        key = await create_key(app.settings)
        response = await app.post(make_event(), key, headers={"Origin": ORIGIN})
        assert response.status_code == 202
        assert response.headers["access-control-allow-origin"] == ORIGIN


async def test_other_origins_get_no_cors_grant(api: ApiFactory) -> None:
    async with api(run_flusher=False, cors_origins=[ORIGIN]) as app:
        key = await create_key(app.settings)
        response = await app.post(make_event(), key, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
