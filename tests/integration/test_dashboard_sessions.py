"""Dashboard sessions, share links and CSRF, over HTTP against the real app.

The browser tests (tests/browser) use the page as people do; these send what a
hostile page or client could: cross-site forms, missing or wrong CSRF tokens,
forged share tokens, cookies on routes that take keys only.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from labs_analytics.auth.keys import Scope
from labs_analytics.auth.repository import KeyRepository
from labs_analytics.settings import Settings
from labs_analytics.storage.database import create_engine
from tests.helpers import ApiFactory, RunningApi, create_key, new_product

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def sign_in(api: RunningApi, key: str) -> tuple[str, str]:
    """The session cookie and the page's CSRF token for ``key``."""
    response = await api.client.post("/dashboard/sign-in", data={"key": key}, headers=FORM)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard"
    cookie = response.cookies["la_session"]
    page = await api.client.get("/dashboard")
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match is not None, page.text
    return cookie, match.group(1)


def key_id(key: str) -> str:
    return key.split("_")[1]


async def test_sign_in_sets_a_strict_http_only_cookie_and_never_shows_the_key(
    api: ApiFactory, settings: Settings
) -> None:
    product = new_product()
    key = await create_key(settings, product, (Scope.READ,))
    async with api() as running:
        response = await running.client.post("/dashboard/sign-in", data={"key": key}, headers=FORM)
        assert response.status_code == 303
        set_cookie = response.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "SameSite=strict" in set_cookie or "SameSite=Strict" in set_cookie
        assert "Path=/" in set_cookie
        assert f"Max-Age={running.settings.dashboard_session_seconds}" in set_cookie
        assert key not in set_cookie
        page = await running.client.get("/dashboard")
        assert page.status_code == 200
        assert product in page.text
        assert key not in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_a_session_must_send_its_csrf_token_on_anything_but_get(
    api: ApiFactory, settings: Settings
) -> None:
    product = new_product()
    key = await create_key(settings, product, (Scope.READ,))
    async with api() as running:
        _cookie, csrf = await sign_in(running, key)
        body = {"metrics": ["events"]}
        missing = await running.client.post("/v1/query", json=body)
        assert missing.status_code == 403
        assert "X-CSRF-Token" in missing.json()["message"]
        wrong = await running.client.post(
            "/v1/query", json=body, headers={"X-CSRF-Token": csrf[:-2] + "xx"}
        )
        assert wrong.status_code == 403
        right = await running.client.post("/v1/query", json=body, headers={"X-CSRF-Token": csrf})
        assert right.status_code == 200, right.text
        # A GET changes nothing: the cookie is enough (EventSource cannot send headers).
        assert (await running.client.get("/v1/events")).status_code == 200


async def test_the_cookie_never_authenticates_ingest_or_admin_routes_it_lacks(
    api: ApiFactory, settings: Settings
) -> None:
    product = new_product()
    key = await create_key(
        settings,
        product,
        (
            Scope.READ,
            Scope.INGEST,
        ),
    )
    async with api() as running:
        _cookie, csrf = await sign_in(running, key)
        headers = {"X-CSRF-Token": csrf}
        ingest = await running.client.post(
            "/v1/events", json={"name": "page.view"}, headers=headers
        )
        assert ingest.status_code == 401  # ingest takes keys only, never a cookie
        assert (await running.client.get("/v1/pipeline")).status_code == 403
        share = await running.client.post("/v1/shares", json={}, headers=headers)
        assert share.status_code == 403


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": "https://evil.example"}, 403),
        ({"Sec-Fetch-Site": "same-origin"}, 303),
        ({"Origin": "http://testserver"}, 303),
    ],
)
async def test_sign_in_refuses_forms_posted_by_other_sites(
    api: ApiFactory, settings: Settings, headers: dict[str, str], status: int
) -> None:
    key = await create_key(settings, new_product(), (Scope.READ,))
    async with api() as running:
        response = await running.client.post(
            "/dashboard/sign-in", data={"key": key}, headers={**FORM, **headers}
        )
        assert response.status_code == status
        assert ("la_session" in response.cookies) == (status == 303)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ("key=", 422, "Paste an API key"),
        ("key=lak_000000000000_" + "a" * 43, 401, "Unknown or revoked"),
        ("key=" + "x" * 5000, 413, "too large"),
        ("&".join(f"f{i}=1" for i in range(20)), 413, "too large"),
        ("key=%ff%fe", 401, "Unknown or revoked"),
    ],
)
async def test_sign_in_answers_bad_forms_with_a_page_saying_why(
    api: ApiFactory, body: str, status: int, says: str
) -> None:
    async with api() as running:
        response = await running.client.post("/dashboard/sign-in", content=body, headers=FORM)
        assert response.status_code == status
        assert says in response.text
        assert "la_session" not in response.cookies


async def test_an_ingest_only_key_cannot_sign_in(api: ApiFactory, settings: Settings) -> None:
    key = await create_key(settings, new_product(), (Scope.INGEST,))
    async with api() as running:
        response = await running.client.post("/dashboard/sign-in", data={"key": key}, headers=FORM)
        assert response.status_code == 403
        assert "may only send events" in response.text


async def test_a_session_expires_and_ends_with_its_key(api: ApiFactory, settings: Settings) -> None:
    product = new_product()
    key = await create_key(settings, product, (Scope.READ,))
    async with api(dashboard_session_seconds=1) as running:
        cookie, _csrf = await sign_in(running, key)
        assert (await running.client.get("/v1/events")).status_code == 200
        await asyncio.sleep(1.3)
        # Sent by hand: the client's jar has dropped it already; the server must too.
        running.client.cookies.clear()
        expired = await running.client.get("/v1/events", headers={"Cookie": f"la_session={cookie}"})
        assert expired.status_code == 401
        assert "sign in again" in expired.json()["message"]
        page = await running.client.get("/dashboard", headers={"Cookie": f"la_session={cookie}"})
        assert 'action="/dashboard/sign-in"' in page.text  # the sign-in form again
    async with api() as running:
        await sign_in(running, key)
        engine = create_engine(running.settings.database_url)
        try:
            assert await KeyRepository(engine).revoke(key_id(key))
        finally:
            await engine.dispose()
        await running.app.state.labs.key_cache.refresh()
        assert (await running.client.get("/v1/events")).status_code == 401


async def test_sign_out_needs_the_csrf_token_and_kills_the_session_on_the_server(
    api: ApiFactory, settings: Settings
) -> None:
    key = await create_key(settings, new_product(), (Scope.READ,))
    async with api() as running:
        cookie, csrf = await sign_in(running, key)
        refused = await running.client.post(
            "/dashboard/sign-out", data={"csrf": "forged"}, headers=FORM
        )
        assert refused.status_code == 403
        assert (await running.client.get("/v1/events")).status_code == 200
        done = await running.client.post("/dashboard/sign-out", data={"csrf": csrf}, headers=FORM)
        assert done.status_code == 303
        assert done.headers["location"] == "/dashboard?signed-out"
        assert "la_session" not in running.client.cookies
        page = await running.client.get("/dashboard?signed-out")
        assert "Signed out." in page.text
        running.client.cookies.clear()
        replayed = await running.client.get(
            "/v1/events", headers={"Cookie": f"la_session={cookie}"}
        )
        assert replayed.status_code == 401


async def test_share_links_over_the_api(api: ApiFactory, settings: Settings) -> None:
    product = new_product()
    other = new_product()
    admin = await create_key(settings, product, (Scope.ADMIN,))
    reader = await create_key(settings, product, (Scope.READ,))
    async with api() as running:
        client = running.client
        bearer = {"Authorization": f"Bearer {admin}"}
        created = await client.post("/v1/shares", json={"expires_in_days": 1}, headers=bearer)
        assert created.status_code == 201, created.text
        share = created.json()
        assert share["product"] == product
        assert share["created_by"] == key_id(admin)
        token = share["url"].rsplit("/", 1)[1]
        assert share["url"] == f"http://testserver/dashboard/share/{token}"
        listed = (await client.get("/v1/shares", headers=bearer)).json()
        assert [s["share_id"] for s in listed] == [share["share_id"]]
        assert all("url" not in s for s in listed)  # the token is shown once

        too_long = await client.post("/v1/shares", json={"expires_in_days": 91}, headers=bearer)
        assert too_long.status_code == 422
        assert too_long.json()["details"][0]["field"] == "body.expires_in_days"
        bad_product = await client.post("/v1/shares", json={"product": "A;--"}, headers=bearer)
        assert bad_product.status_code == 422
        as_reader = await client.post(
            "/v1/shares", json={}, headers={"Authorization": f"Bearer {reader}"}
        )
        assert as_reader.status_code == 403

        # A forged secret for a real id, and a token of the wrong shape, open nothing.
        forged = token[: len("las_") + 13] + "A" * 43
        for wrong in (forged, "las_nope", "x" * 90):
            response = await client.get(f"/dashboard/share/{wrong}")
            assert response.status_code == 404
            assert "la_session" not in response.cookies

        opened = await client.get(f"/dashboard/share/{token}")
        assert opened.status_code == 303
        assert opened.headers["location"] == "/dashboard"
        page = await client.get("/dashboard")
        csrf = re.search(r'data-csrf="([^"]+)"', page.text)
        assert csrf is not None
        headers = {"X-CSRF-Token": csrf.group(1)}
        own = await client.post("/v1/query", json={"metrics": ["events"]}, headers=headers)
        assert own.status_code == 200
        elsewhere = await client.post(
            "/v1/query", json={"metrics": ["events"], "product": other}, headers=headers
        )
        assert elsewhere.status_code == 403

        revoked = await client.delete(f"/v1/shares/{share['share_id']}", headers=bearer)
        assert revoked.status_code == 204
        again = await client.delete(f"/v1/shares/{share['share_id']}", headers=bearer)
        assert again.status_code == 404
        after = await client.post("/v1/query", json={"metrics": ["events"]}, headers=headers)
        assert after.status_code == 401
        assert (await client.get(f"/dashboard/share/{token}")).status_code == 404


async def test_live_streams_snapshots_of_the_product_only(
    api: ApiFactory, settings: Settings
) -> None:
    product = new_product()
    other = new_product()
    key = await create_key(
        settings,
        product,
        (
            Scope.READ,
            Scope.INGEST,
        ),
    )
    other_key = await create_key(settings, other, (Scope.INGEST,))
    # The in-process transport hands over the body once the stream has ended: keep it short.
    async with api(live_poll_seconds=0.05, live_stream_max_seconds=1.5) as running:
        assert (await running.post({"name": "mine.seen"}, key)).status_code == 202
        assert (await running.post({"name": "theirs.hidden"}, other_key)).status_code == 202
        seen: list[str] = []
        async with running.client.stream(
            "GET", "/v1/live", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen.append(line)
                    if '"mine.seen"' in line:
                        break
        assert any('"mine.seen"' in line for line in seen)
        assert not any("theirs.hidden" in line for line in seen)


async def test_every_dashboard_response_is_html_with_the_security_headers(
    api: ApiFactory, settings: Settings
) -> None:
    async with api() as running:
        for response in (
            await running.client.get("/dashboard"),
            await running.client.get("/dashboard/share/las_000000000000_" + "a" * 43),
        ):
            assert response.headers["content-type"].startswith("text/html")
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
        script = await running.client.get("/dashboard/static/dashboard.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        missing = await running.client.get("/dashboard/static/../../settings.py")
        assert missing.status_code == 404


async def test_an_unknown_cookie_is_refused_and_forgotten(
    api: ApiFactory, settings: Settings
) -> None:
    async with api() as running:
        client: httpx.AsyncClient = running.client
        for value in ("x" * 43, "garbage", "a" * 4000):
            response = await client.get("/v1/events", headers={"Cookie": f"la_session={value}"})
            assert response.status_code == 401
        page = await client.get("/dashboard", headers={"Cookie": "la_session=" + "x" * 43})
        assert 'la_session=""' in page.headers.get("set-cookie", "")


async def test_behind_a_path_prefix_every_link_keeps_it(
    api: ApiFactory, settings: Settings
) -> None:
    key = await create_key(settings, new_product(), (Scope.READ,))
    async with api() as running:
        transport = httpx.ASGITransport(app=running.app, root_path="/analytics")
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            page = await client.get("/analytics/dashboard")
            assert page.status_code == 200, page.text
            assert 'action="/analytics/dashboard/sign-in"' in page.text
            assert 'href="/analytics/dashboard/static/dashboard.css' in page.text
            signed = await client.post(
                "/analytics/dashboard/sign-in", data={"key": key}, headers=FORM
            )
            assert signed.headers["location"] == "/analytics/dashboard"
            app_page = await client.get("/analytics/dashboard")
            assert 'data-base="/analytics"' in app_page.text
            assert 'src="/analytics/dashboard/static/dashboard.js' in app_page.text
            script = await client.get("/analytics/dashboard/static/dashboard.js")
            assert script.status_code == 200
