"""Health, readiness and metrics describe the deployment: no web page may read them."""

from __future__ import annotations

import pytest

from tests.helpers import ApiFactory, create_key, make_event

ORIGIN = "https://any-site.example"


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/healthz"])
async def test_no_origin_may_read_deployment_endpoints_even_with_cors_open_to_all(
    api: ApiFactory, path: str
) -> None:
    async with api(run_flusher=False, cors_origins=["*"]) as app:
        response = await app.client.get(path, headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in response.headers
        preflight = await app.client.options(
            path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in preflight.headers


async def test_the_public_api_still_answers_cors_when_open_to_all(api: ApiFactory) -> None:
    async with api(run_flusher=False, cors_origins=["*"]) as app:
        key = await create_key(app.settings)
        response = await app.post(make_event(), key, headers={"Origin": ORIGIN})
        assert response.status_code == 202
        assert response.headers["access-control-allow-origin"] == "*"


async def test_metrics_require_the_token_when_one_is_set(api: ApiFactory) -> None:
    async with api(run_flusher=False, metrics_token="scrape-secret") as app:
        missing = await app.client.get("/metrics")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthenticated"
        wrong = await app.client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await app.client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert right.status_code == 200
        assert "labs_events_accepted_total" in right.text


async def test_an_ingest_key_is_not_a_metrics_token(api: ApiFactory) -> None:
    async with api(run_flusher=False, metrics_token="scrape-secret") as app:
        key = await create_key(app.settings)
        response = await app.client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401
