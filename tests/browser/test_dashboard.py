"""The dashboard, used as its users use it: Chromium against a real server.

Every number a panel shows is checked against the read API's own answer for
the same request, made here with a bearer key; the page must log no errors.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.browser.conftest import Console, Site, open_view, screenshot, sign_in
from tests.helpers import Servers, serve_process

pytestmark = pytest.mark.timeout(120)
RANGE = "range=7d&tz=UTC"


def kpi(page: Any, name: str) -> str:
    value: str = page.get_attribute(f"[data-kpi='{name}'] .kpi-value", "data-value")
    return value


def table_rows(page: Any, panel: str) -> list[list[str]]:
    """A panel's table: each row's header cell's text, then each cell's exact value."""
    return page.eval_on_selector_all(
        f"#panel-{panel} tbody tr",
        """rows => rows.map(row => [row.querySelector('th').textContent,
            ...[...row.querySelectorAll('td')].map(td => td.dataset.value ?? td.textContent)])""",
    )


def norm(values: list[Any]) -> list[Any]:
    """Values as numbers where they are numbers (JavaScript prints 100.0 as "100")."""

    def one(value: Any) -> Any:
        if value in (None, "\u2013", "(none)"):  # how the page shows "no value"
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return value

    return [one(v) for v in values]


def rows_of(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [norm([*r["dimensions"], *r["metrics"]]) for r in results]


def test_sign_in_refuses_unknown_and_ingest_only_keys(
    site: Site, new_page: Any, console: Console
) -> None:
    site.expect_console_error(console, 401)
    site.expect_console_error(console, 403)
    page = new_page()
    page.goto(f"{site.base_url}/dashboard")
    screenshot(page, "sign-in")
    page.fill("#key", "lak_000000000000_" + "x" * 43)
    page.click("button[type=submit]")
    assert "Unknown or revoked API key" in page.inner_text("[role=alert]")
    page.fill("#key", site.ingest_key)
    page.click("button[type=submit]")
    assert "may only send events" in page.inner_text("[role=alert]")
    assert page.context.cookies() == []


def test_sign_in_keeps_the_key_out_of_the_page(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.read_key, query=f"view=overview&{RANGE}")
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "la_session"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert 0 < cookie["expires"] - time.time() <= site.settings.dashboard_session_seconds + 5
    assert site.read_key not in page.content()
    assert site.read_key not in page.url
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0


def test_overview_numbers_equal_the_read_api(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.read_key, query=f"view=overview&{RANGE}&prop=club")
    states = page.eval_on_selector_all("section.panel", "s => s.map(p => p.dataset.state)")
    assert states == ["ready"] * 4
    screenshot(page, "overview", readme=True)

    body = {"date_range": "7d", "timezone": "UTC"}
    (totals,) = site.query({**body, "metrics": ["events", "users"]})["results"]
    assert norm([kpi(page, "events"), kpi(page, "users")]) == norm(totals["metrics"])
    for name, date_range in (("dau", "today"), ("wau", "7d"), ("mau", "30d")):
        answer = site.query({"metrics": ["users"], "date_range": date_range, "timezone": "UTC"})
        assert norm([kpi(page, name)]) == norm(answer["results"][0]["metrics"])

    top = site.query(
        {
            **body,
            "metrics": ["events", "users"],
            "dimensions": ["name"],
            "limit": 10,
            "order_by": [["events", "desc"]],
        }
    )
    assert [norm(row) for row in table_rows(page, "top-events")] == rows_of(top["results"])
    clubs = site.query(
        {
            **body,
            "metrics": ["events", "users"],
            "dimensions": ["prop:club"],
            "limit": 10,
            "order_by": [["events", "desc"]],
        }
    )
    assert [norm(row) for row in table_rows(page, "top-values")] == rows_of(clubs["results"])
    # The previous period (the 7 days before) is overlaid, dashed, with the change in percent.
    assert page.locator("#panel-overview polyline.dashed").count() == 1
    today = dt.datetime.now(dt.UTC).date()
    before = [str(today - dt.timedelta(days=13)), str(today - dt.timedelta(days=7))]
    (previous,) = site.query({"date_range": before, "timezone": "UTC", "metrics": ["events"]})[
        "results"
    ]
    change = page.get_attribute("[data-kpi='events'] .kpi-change", "data-change")
    expected = (totals["metrics"][0] - previous["metrics"][0]) / previous["metrics"][0] * 100
    assert float(change) == pytest.approx(expected)
    # Another product's events never appear.
    assert "other.secret" not in page.content()
    assert "hidden" not in page.inner_text("main")


def test_panels_download_what_they_show_as_csv(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.read_key, query=f"view=overview&{RANGE}")
    with page.expect_download() as download:
        page.click("#panel-top-events button.csv")
    text = Path(download.value.path()).read_bytes().decode()
    lines = text.strip().split("\r\n")
    assert lines[0] == "name,events,users"
    assert [norm(line.split(",")) for line in lines[1:]] == [
        norm(row) for row in table_rows(page, "top-events")
    ]
    assert download.value.suggested_filename == f"{site.product}-top-events.csv"


def test_api_health_equals_the_read_api(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.read_key, query=f"view=api&{RANGE}")
    screenshot(page, "api-health")
    requests = [["is", "name", ["http.request"]]]
    errors = [*requests, ["gte", "prop:status_code", [500]]]
    latency = ["p50:duration_ms", "p95:duration_ms", "p99:duration_ms"]
    body = {"date_range": "7d", "timezone": "UTC"}
    (all_,) = site.query({**body, "metrics": ["events", *latency], "filters": requests})["results"]
    (failed,) = site.query({**body, "metrics": ["events"], "filters": errors})["results"]
    total, p50, p95, p99 = all_["metrics"]
    assert norm([kpi(page, "requests"), kpi(page, "errors")]) == norm([total, failed["metrics"][0]])
    assert norm([kpi(page, "p50"), kpi(page, "p95"), kpi(page, "p99")]) == norm([p50, p95, p99])
    assert float(kpi(page, "error-rate")) == pytest.approx(failed["metrics"][0] / total * 100)

    routes = site.query(
        {
            **body,
            "metrics": ["events", *latency],
            "dimensions": ["prop:route"],
            "filters": requests,
            "order_by": [["events", "desc"]],
            "limit": 100,
        }
    )["results"]
    route_errors = {
        r["dimensions"][0]: r["metrics"][0]
        for r in site.query(
            {**body, "metrics": ["events"], "dimensions": ["prop:route"], "filters": errors}
        )["results"]
    }
    shown = table_rows(page, "api-routes")
    assert [row[0] for row in shown] == [r["dimensions"][0] for r in routes]
    for row, expected in zip(shown, routes, strict=True):
        count, *percentiles = expected["metrics"]
        errors_here = route_errors.get(expected["dimensions"][0], 0)
        assert norm(row[1:3]) == norm([count, errors_here])
        assert norm(row[4:]) == norm(percentiles)
    slowest = table_rows(page, "api-slowest")
    p95s = [float(row[5]) for row in slowest]
    assert p95s == sorted(p95s, reverse=True)
    assert len(slowest) == min(5, len(routes))


def test_funnel_and_retention_equal_the_read_api(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.read_key, query=f"view=funnel&{RANGE}")
    assert page.get_attribute("#panel-funnel", "data-state") == "empty"
    page.fill("#funnel-steps", "club.view\nclub.apply")
    page.fill("#funnel-window", "3d")
    page.click("#panel-funnel button[type=submit]")
    page.wait_for_selector("#panel-funnel[data-state=ready]")
    assert "step=club.view&step=club.apply&window=3d" in page.url  # bookmarkable
    screenshot(page, "funnel")
    funnel = site.api(
        "POST",
        "/v1/funnels",
        json={
            "steps": [{"name": "club.view"}, {"name": "club.apply"}],
            "window": "3d",
            "date_range": "7d",
            "timezone": "UTC",
        },
    )
    assert [norm(row[:2]) for row in table_rows(page, "funnel")] == [
        norm([s["name"], s["users"]]) for s in funnel["steps"]
    ]

    open_view(page, site, f"view=retention&{RANGE}&start=club.view&return=club.apply&period=day")
    screenshot(page, "retention")
    retention = site.api(
        "POST",
        "/v1/retention",
        json={
            "start_event": {"name": "club.view"},
            "return_event": {"name": "club.apply"},
            "period": "day",
            "periods": 8,
            "date_range": "7d",
            "timezone": "UTC",
        },
    )
    assert [norm(row) for row in table_rows(page, "retention")] == [
        norm([c["cohort"], c["size"], *c["percent"]]) for c in retention["cohorts"]
    ]


def test_user_summary_equals_the_read_api(site: Site, new_page: Any) -> None:
    page = new_page()
    user = site.users[0]
    year = dt.datetime.now(dt.UTC).year
    sign_in(page, site, site.read_key, query=f"view=user&tz=UTC&user={user}&year={year}")
    screenshot(page, "user-summary")
    summary = site.api(
        "GET",
        f"/v1/users/{user}/summary",
        params={"timezone": "UTC", "from": f"{year}-01-01", "to": f"{year}-12-31"},
    )
    assert norm([kpi(page, "total-events"), kpi(page, "active-days")]) == norm(
        [summary["total_events"], summary["active_days"]]
    )
    by_name = summary["events_by_name"][:20]
    assert [norm(row) for row in table_rows(page, "user")[: len(by_name)]] == [
        norm([n["name"], n["events"]]) for n in by_name
    ]


def test_live_panel_shows_a_new_event_within_five_seconds(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.read_key, query="view=live")
    page.wait_for_selector("#panel-live[data-state=ready]", timeout=10_000)
    name = f"live.{uuid.uuid4().hex[:8]}"
    sent = time.monotonic()
    response = httpx.post(
        f"{site.base_url}/v1/events",
        json={"name": name, "user": "live-user"},
        headers={"Authorization": f"Bearer {site.ingest_key}"},
    )
    assert response.status_code == 202
    page.wait_for_selector(f"#panel-live tbody td:text-is('{name}')", timeout=5_000)
    assert time.monotonic() - sent < 5
    screenshot(page, "live")


def test_pipeline_panel_is_for_admin_keys_only(site: Site, new_page: Any) -> None:
    reader = new_page()
    sign_in(reader, site, site.read_key, query="view=pipeline")
    assert reader.locator("nav a[data-view=pipeline]").count() == 0
    assert reader.get_attribute("main#view", "data-view") == "overview"
    assert reader.context.request.get(f"{site.base_url}/v1/pipeline").status == 403

    admin = new_page()
    sign_in(admin, site, site.admin_key, query="view=pipeline")
    assert admin.get_attribute("#panel-pipeline", "data-state") == "ready"
    assert admin.inner_text("[data-status=redis]") == "Redis: up"
    assert admin.inner_text("[data-status=postgresql]") == "PostgreSQL: up"
    screenshot(admin, "pipeline", readme=True)
    state = site.api("GET", "/v1/pipeline", site.admin_key)
    assert state["flush"]["batches"] >= 1
    assert norm([kpi(admin, "spool")]) == norm([state["spool"]["bytes"]])


def test_a_share_link_shows_one_product_until_revoked(
    site: Site, new_page: Any, console: Console
) -> None:
    site.expect_console_error(console, 404)  # the revoked link's page
    admin = new_page()
    sign_in(admin, site, site.admin_key, query="view=sharing")
    admin.fill("input[name=days]", "2")
    admin.click("#panel-sharing button[type=submit]")
    url = admin.input_value("input.share-url", timeout=5_000)
    assert url.startswith(f"{site.base_url}/dashboard/share/las_")
    screenshot(admin, "sharing")

    viewer = new_page()
    viewer.goto(url)
    viewer.wait_for_selector("main#view[data-ready=true]")
    assert viewer.url.startswith(f"{site.base_url}/dashboard?")
    assert "las_" not in viewer.url  # the token left the address bar
    assert viewer.inner_text("header .product") == site.product
    assert "a shared link" in viewer.inner_text("header .who")
    assert viewer.locator("nav a[data-view=sharing]").count() == 0
    request = viewer.context.request
    csrf = viewer.get_attribute("body", "data-csrf")
    other = request.post(
        f"{site.base_url}/v1/query",
        data={"metrics": ["events"], "product": site.other_product},
        headers={"X-CSRF-Token": csrf},
    )
    assert other.status == 403
    own = request.post(
        f"{site.base_url}/v1/query", data={"metrics": ["events"]}, headers={"X-CSRF-Token": csrf}
    )
    assert own.status == 200
    create = request.post(
        f"{site.base_url}/v1/shares", data={"expires_in_days": 1}, headers={"X-CSRF-Token": csrf}
    )
    assert create.status == 403  # read-only: it cannot share further

    admin.click("#panel-sharing li button")  # revoke
    admin.wait_for_selector("#panel-sharing[data-state=empty]")
    response = request.post(
        f"{site.base_url}/v1/query", data={"metrics": ["events"]}, headers={"X-CSRF-Token": csrf}
    )
    assert response.status == 401
    viewer.goto(url)
    assert "expired or was revoked" in viewer.inner_text("main")


def test_sign_out_ends_the_session(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.read_key, query=f"view=overview&{RANGE}")
    (cookie,) = page.context.cookies()
    page.click("form[action='/dashboard/sign-out'] button")
    page.wait_for_selector("text=Signed out.")
    assert page.url == f"{site.base_url}/dashboard?signed-out"
    page.reload()  # nothing posted again, still signed out
    assert page.context.cookies() == []
    replayed = httpx.post(
        f"{site.base_url}/v1/query",
        json={"metrics": ["events"]},
        cookies={"la_session": cookie["value"]},
        headers={"X-CSRF-Token": "anything"},
    )
    assert replayed.status_code == 401  # the old cookie is dead on the server too


def test_a_product_without_events_says_how_to_send_one(site: Site, new_page: Any) -> None:
    page = new_page()
    sign_in(page, site, site.empty_read_key, query=f"view=overview&{RANGE}")
    assert page.get_attribute("#panel-overview", "data-state") == "empty"
    assert "curl -X POST" in page.inner_text("#panel-overview")
    assert site.product not in page.content()


def test_usable_at_375_px_and_by_keyboard(site: Site, new_page: Any) -> None:
    page = new_page(width=375, height=800)
    sign_in(page, site, site.read_key, query=f"view=api&{RANGE}")
    screenshot(page, "api-health-375px")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the screen"
    # Keyboard only: tab to the "Overview" link and follow it.
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.view") == "overview":
            break
    else:
        pytest.fail("the Overview link is not reachable by Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("main#view[data-view=overview][data-ready=true]")


def test_no_serious_accessibility_violations(site: Site, new_page: Any) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    page = new_page()
    page.goto(f"{site.base_url}/dashboard")
    pages = {"sign-in": None}
    found: dict[str, list[str]] = {}
    for name, query in {
        **pages,
        "overview": f"view=overview&{RANGE}&prop=club",
        "api": f"view=api&{RANGE}",
        "retention": f"view=retention&{RANGE}&start=club.view",
        "pipeline": "view=pipeline",
        "sharing": "view=sharing",
    }.items():
        if query is not None:
            if "la_session" not in {c["name"] for c in page.context.cookies()}:
                sign_in(page, site, site.admin_key)
            open_view(page, site, query)
        results = axe.run(page)
        serious = [
            f"{v['id']} ({v['impact']}): {v['help']}"
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if serious:
            found[name] = serious
    assert found == {}


def test_an_expired_session_asks_to_sign_in_again(
    site: Site, new_page: Any, console: Console, tmp_path: Path
) -> None:
    site.expect_console_error(console, 401)
    with serve_process(site.settings, tmp_path, DASHBOARD_SESSION_SECONDS="2") as short:
        page = new_page()
        page.goto(f"{short.base_url}/dashboard")
        page.fill("#key", site.read_key)
        page.click("button[type=submit]")
        page.wait_for_selector("main#view[data-ready=true]")
        time.sleep(2.5)
        page.click("#controls button[type=submit]")  # re-render: every panel asks again
        page.wait_for_selector("main#view[data-ready=true] #panel-overview[data-state=error]")
        assert "Your session has ended" in page.inner_text("#panel-overview")
        page.reload()
        assert page.locator("form[action='/dashboard/sign-in']").count() == 1


def test_postgres_down_pipeline_says_so_and_reads_explain(
    site: Site, new_page: Any, console: Console, servers: Servers
) -> None:
    if servers.postgres is None:
        pytest.skip("needs the embedded PostgreSQL (TEST_DATABASE_URL names a server to keep)")
    site.expect_console_error(console, 503)
    page = new_page()
    sign_in(page, site, site.admin_key)
    servers.postgres.stop(mode="immediate")
    try:
        open_view(page, site, "view=pipeline")
        assert page.inner_text("[data-status=postgresql]") == "PostgreSQL: down"
        assert page.inner_text("[data-status=redis]") == "Redis: up"
        assert "PostgreSQL is down: events are kept in Redis" in page.inner_text("#panel-pipeline")
        screenshot(page, "pipeline-postgres-down")
        open_view(page, site, f"view=overview&{RANGE}")
        for panel in ("overview", "active-users", "top-events"):
            assert page.get_attribute(f"#panel-{panel}", "data-state") == "error"
            assert "Reads need PostgreSQL" in page.inner_text(f"#panel-{panel}")
        screenshot(page, "overview-postgres-down")
    finally:
        servers.postgres.start()
